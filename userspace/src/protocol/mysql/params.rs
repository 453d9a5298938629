//! The parameters of a COM_STMT_EXECUTE, for what a reviewer approves: a prepared write that
//! needs review is held at execution with its values shown (`UPDATE t SET v = ? WHERE id = ?
//! -- parameters: (5, 'x')`). Values are rendered as SQL literals on one line, so the text
//! still classifies as the statement it annotates (the parameters sit in a line comment that
//! no value can end); long values are shortened with their SHA-256, so two different values
//! never read the same to a reviewer or to an approval grant.

use std::fmt::Write as _;

use mysql_common::constants::ColumnType;
use sha2::{Digest, Sha256};

use super::codec;

/// Longest value rendered whole.
const MAX_SHOWN: usize = 200;

/// Why parameters could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed COM_STMT_EXECUTE parameters: {0}")]
pub struct ParamError(&'static str);

/// The execute's header: statement id, cursor flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecuteHeader {
    pub statement: u32,
    pub flags: u8,
}

/// Reads a COM_STMT_EXECUTE body's statement id and flags.
pub fn header(body: &[u8]) -> Result<ExecuteHeader, ParamError> {
    let b = body.get(..5).ok_or(ParamError("short header"))?;
    Ok(ExecuteHeader {
        statement: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        flags: b[4],
    })
}

/// The parameter types this execute sends (when its new-params-bound flag is set): two bytes
/// per parameter (type, 0x80 for unsigned). MySQL and MariaDB read any non-zero flag as set.
pub fn new_types(body: &[u8], params: u16) -> Result<Option<Vec<u8>>, ParamError> {
    if params == 0 {
        return Ok(None);
    }
    let n = usize::from(params);
    let at = 9 + n.div_ceil(8);
    let bound = *body.get(at).ok_or(ParamError("no new-params-bound flag"))?;
    if bound == 0 {
        return Ok(None);
    }
    body.get(at + 1..at + 1 + 2 * n)
        .map(|t| Some(t.to_vec()))
        .ok_or(ParamError("truncated parameter types"))
}

/// Renders the parameter values of an execute body (after the command byte) as `(v1, v2, …)`.
/// `types` are the types in force (this execute's or the last ones sent).
pub fn render(body: &[u8], params: u16, types: &[u8]) -> Result<String, ParamError> {
    let n = usize::from(params);
    if n == 0 {
        return Ok("()".into());
    }
    let bitmap_at = 9;
    let bitmap = body
        .get(bitmap_at..bitmap_at + n.div_ceil(8))
        .ok_or(ParamError("truncated NULL bitmap"))?;
    let mut pos = bitmap_at + bitmap.len();
    let bound = *body
        .get(pos)
        .ok_or(ParamError("no new-params-bound flag"))?;
    pos += 1;
    if bound != 0 {
        pos += 2 * n;
    }
    if types.len() < 2 * n {
        return Err(ParamError("no parameter types were ever sent"));
    }
    let mut out = String::from("(");
    for i in 0..n {
        if i > 0 {
            out.push_str(", ");
        }
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            out.push_str("NULL");
            continue;
        }
        let (t, unsigned) = (types[2 * i], types[2 * i + 1] & 0x80 != 0);
        let rest = body.get(pos..).ok_or(ParamError("truncated values"))?;
        pos += value(t, unsigned, rest, &mut out)?;
    }
    if pos != body.len() {
        return Err(ParamError("trailing bytes after the values"));
    }
    out.push(')');
    Ok(out)
}

fn fixed<const N: usize>(b: &[u8]) -> Result<[u8; N], ParamError> {
    b.get(..N)
        .and_then(|s| s.try_into().ok())
        .ok_or(ParamError("truncated value"))
}

/// Appends one value as a literal; returns the bytes it took.
fn value(t: u8, unsigned: bool, b: &[u8], out: &mut String) -> Result<usize, ParamError> {
    use ColumnType::*;
    let ty = ColumnType::try_from(t).map_err(|_| ParamError("unknown parameter type"))?;
    let _ = match ty {
        MYSQL_TYPE_NULL => {
            out.push_str("NULL");
            return Ok(0);
        }
        MYSQL_TYPE_TINY => {
            let [v] = fixed::<1>(b)?;
            let _ = if unsigned {
                write!(out, "{v}")
            } else {
                write!(out, "{}", v as i8)
            };
            return Ok(1);
        }
        MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR => {
            let v = fixed::<2>(b)?;
            if unsigned {
                write!(out, "{}", u16::from_le_bytes(v))
            } else {
                write!(out, "{}", i16::from_le_bytes(v))
            }
        }
        MYSQL_TYPE_LONG | MYSQL_TYPE_INT24 => {
            let v = fixed::<4>(b)?;
            if unsigned {
                write!(out, "{}", u32::from_le_bytes(v))
            } else {
                write!(out, "{}", i32::from_le_bytes(v))
            }
        }
        MYSQL_TYPE_LONGLONG => {
            let v = fixed::<8>(b)?;
            if unsigned {
                write!(out, "{}", u64::from_le_bytes(v))
            } else {
                write!(out, "{}", i64::from_le_bytes(v))
            }
        }
        MYSQL_TYPE_FLOAT => write!(out, "{:?}", f32::from_le_bytes(fixed::<4>(b)?)),
        MYSQL_TYPE_DOUBLE => write!(out, "{:?}", f64::from_le_bytes(fixed::<8>(b)?)),
        MYSQL_TYPE_DATE
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP2 => {
            let len = usize::from(*b.first().ok_or(ParamError("truncated date"))?);
            // The lengths the server reads; another would be read otherwise than shown.
            if !matches!(len, 0 | 4 | 7 | 11) {
                return Err(ParamError("a date of a length the server does not read"));
            }
            let d = b.get(1..1 + len).ok_or(ParamError("truncated date"))?;
            let g = |i: usize| d.get(i).copied().map_or(0, u32::from);
            let year = d.get(..2).map_or(0, |y| u16::from_le_bytes([y[0], y[1]]));
            let micros = micros_at(d, 7)?;
            let _ = write!(
                out,
                "'{year:04}-{:02}-{:02} {:02}:{:02}:{:02}.{micros:06}'",
                g(2),
                g(3),
                g(4),
                g(5),
                g(6)
            );
            return Ok(1 + len);
        }
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => {
            let len = usize::from(*b.first().ok_or(ParamError("truncated time"))?);
            if !matches!(len, 0 | 8 | 12) {
                return Err(ParamError("a time of a length the server does not read"));
            }
            let d = b.get(1..1 + len).ok_or(ParamError("truncated time"))?;
            let g = |i: usize| d.get(i).copied().map_or(0, u32::from);
            // Days are a client-chosen u32: widen before scaling so no value overflows.
            let days = d
                .get(1..5)
                .map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]));
            let hours = u64::from(days) * 24 + u64::from(g(5));
            // The server reads any non-zero byte as negative.
            let sign = if g(0) != 0 { "-" } else { "" };
            // Microseconds too (length 12): two values differing only there are two values,
            // to the reviewer and to a grant's hash.
            let micros = micros_at(d, 8)?;
            let _ = write!(out, "'{sign}{hours}:{:02}:{:02}.{micros:06}'", g(6), g(7));
            return Ok(1 + len);
        }
        _ => {
            let (v, used) = codec::read_lenenc_bytes(b).ok_or(ParamError("truncated string"))?;
            literal(v, out);
            return Ok(used);
        }
    };
    Ok(match ty {
        MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR => 2,
        MYSQL_TYPE_LONG | MYSQL_TYPE_INT24 | MYSQL_TYPE_FLOAT => 4,
        _ => 8,
    })
}

/// The microseconds of a binary date or time at `at` (0 when the value is shorter), refused
/// past 999999, which the server does not read as written.
fn micros_at(d: &[u8], at: usize) -> Result<u32, ParamError> {
    let micros = d
        .get(at..at + 4)
        .map_or(0, |m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    if micros > 999_999 {
        return Err(ParamError("microseconds over 999999"));
    }
    Ok(micros)
}

/// A string literal with every control character escaped (so the rendered text stays one
/// line), or a hex literal for bytes that are not UTF-8; shortened with a hash when long.
fn literal(v: &[u8], out: &mut String) {
    let shown = &v[..v.len().min(MAX_SHOWN)];
    match std::str::from_utf8(shown).or_else(|e| std::str::from_utf8(&shown[..e.valid_up_to()])) {
        Ok(s) if std::str::from_utf8(v).is_ok() || v.len() > MAX_SHOWN => {
            out.push('\'');
            for c in s.chars() {
                match c {
                    '\'' => out.push_str("''"),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\0' => out.push_str("\\0"),
                    c if c.is_control() => {
                        let _ = write!(out, "\\u{{{:x}}}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            out.push('\'');
        }
        _ => {
            out.push_str("X'");
            for b in shown {
                let _ = write!(out, "{b:02X}");
            }
            out.push('\'');
        }
    }
    if v.len() > MAX_SHOWN {
        let digest = Sha256::digest(v);
        let _ = write!(out, "/*…{} bytes, sha256 ", v.len());
        for b in &digest[..16] {
            let _ = write!(out, "{b:02x}");
        }
        out.push_str("*/");
    }
}

/// The statement text with its parameters, as a reviewer sees it.
pub fn annotate(text: &str, rendered: &str) -> String {
    format!("{} -- parameters: {rendered}", text.trim_end())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An execute body: statement 1, no cursor, 1 iteration, then `rest`.
    fn body(rest: &[u8]) -> Vec<u8> {
        let mut b = vec![1, 0, 0, 0, 0, 1, 0, 0, 0];
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn renders_nulls_and_dates() {
        // Three params: LONGLONG 5, NULL (bit 1), DATE 2024-02-03.
        let mut rest = vec![0b010, 1, 8, 0, 253, 0, 10, 0];
        rest.extend_from_slice(&5i64.to_le_bytes());
        rest.extend_from_slice(&[4, 0xe8, 0x07, 2, 3]);
        let b = body(&rest);
        assert_eq!(new_types(&b, 3).unwrap(), Some(vec![8, 0, 253, 0, 10, 0]));
        assert_eq!(
            render(&b, 3, &[8, 0, 253, 0, 10, 0]).unwrap(),
            "(5, NULL, '2024-02-03 00:00:00.000000')"
        );
        // Too few types for the parameters, or a body cut short: an error, never a guess.
        assert!(render(&b, 3, &[8, 0]).is_err());
        assert!(render(&b[..b.len() - 1], 3, &[8, 0, 253, 0, 10, 0]).is_err());
    }

    #[test]
    fn any_non_zero_new_params_bound_flag_sends_types() {
        // The servers read any non-zero flag as "types follow": a flag of 2 with types
        // LONGLONG then the value 5 is `(5)`, not the types' bytes read as a value.
        let mut rest = vec![0, 2, 8, 0];
        rest.extend_from_slice(&5i64.to_le_bytes());
        let b = body(&rest);
        assert_eq!(new_types(&b, 1).unwrap(), Some(vec![8, 0]));
        assert_eq!(render(&b, 1, &[8, 0]).unwrap(), "(5)");
        let b = body(&[0, 0x80, 1, 0, 9]);
        assert_eq!(new_types(&b, 1).unwrap(), Some(vec![1, 0]));
        assert_eq!(render(&b, 1, &[1, 0]).unwrap(), "(9)");
        // Zero: the types in force.
        let b = body(&[0, 0, 9]);
        assert_eq!(new_types(&b, 1).unwrap(), None);
        assert_eq!(render(&b, 1, &[1, 0]).unwrap(), "(9)");
    }

    #[test]
    fn a_time_of_any_length_renders_without_overflow() {
        // One TIME param: negative, u32::MAX days, 5:06:07 (found by the mysql_wire fuzzer).
        let mut rest = vec![0, 1, 11, 0, 8, 1];
        rest.extend_from_slice(&u32::MAX.to_le_bytes());
        rest.extend_from_slice(&[5, 6, 7]);
        let b = body(&rest);
        let hours = u64::from(u32::MAX) * 24 + 5;
        assert_eq!(
            render(&b, 1, &[11, 0]).unwrap(),
            format!("('-{hours}:06:07.000000')")
        );
        // With microseconds (length 12): they are part of the value.
        let mut rest = vec![0, 1, 11, 0, 12, 0];
        rest.extend_from_slice(&0u32.to_le_bytes());
        rest.extend_from_slice(&[5, 6, 7]);
        rest.extend_from_slice(&250_000u32.to_le_bytes());
        assert_eq!(
            render(&body(&rest), 1, &[11, 0]).unwrap(),
            "('5:06:07.250000')"
        );
    }

    #[test]
    fn renders_a_well_formed_execute() {
        // Two params: LONGLONG 5, VAR_STRING "it's\n".
        let mut rest = vec![0, 1, 8, 0, 253, 0];
        rest.extend_from_slice(&5i64.to_le_bytes());
        rest.extend_from_slice(&[5, b'i', b't', b'\'', b's', b'\n']);
        let b = body(&rest);
        assert_eq!(new_types(&b, 2).unwrap(), Some(vec![8, 0, 253, 0]));
        assert_eq!(render(&b, 2, &[8, 0, 253, 0]).unwrap(), "(5, 'it''s\\n')");
        // A NULL second parameter, types from an earlier execute.
        let b = body(&[0b10, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(render(&b, 2, &[8, 0, 253, 0]).unwrap(), "(7, NULL)");
        assert!(render(&b[..12], 2, &[8, 0, 253, 0]).is_err());
        let text = annotate("UPDATE t SET v = ? WHERE id = ?", "(5, 'a')");
        assert_eq!(
            text,
            "UPDATE t SET v = ? WHERE id = ? -- parameters: (5, 'a')"
        );
    }

    #[test]
    fn long_and_binary_values_are_shortened_with_a_hash() {
        let mut a = String::new();
        literal(&vec![b'a'; 1000], &mut a);
        let mut b = String::new();
        let mut other = vec![b'a'; 1000];
        other[999] = b'b';
        literal(&other, &mut b);
        assert_ne!(
            a, b,
            "values differing past the shown prefix read differently"
        );
        assert!(a.contains("1000 bytes, sha256"), "{a}");
        let mut h = String::new();
        literal(&[0xff, 0x00, 0x41], &mut h);
        assert_eq!(h, "X'FF0041'");
        assert!(!a.contains('\n'));
    }
}
