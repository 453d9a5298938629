//! Bound parameters: a Bind message's values framed as the gate's [`Param`]s (borrowed from
//! the wire, no copy), and each value decoded for a reviewer (text and binary formats of the
//! common types; anything else as hex with its type OID).

use std::borrow::Cow;
use std::sync::Arc;

use postgres_protocol::types as pg;

use bytes::BytesMut;

use super::codec::{FrameError, Reader};
use super::dry_run::{Upstream, param_columns};
use super::types::oid;
use crate::approval::{DryRun, Preview, PreviewAsk, PreviewFuture, Previewed, ShownParam};
use crate::mask::{ColumnRef, MaskOutcome, Masker, ValueFormat, ValueKind};
use crate::model::{Command, Facts, Param, ParamFormat};

/// Most parameters a Parse may declare and a Bind may carry (the protocol's count is an
/// Int16).
pub const MAX_PARAMS: usize = u16::MAX as usize;

/// The parameter type OIDs of a Parse body after its statement text (`rest`).
pub fn parse_types(rest: &[u8]) -> Result<Box<[u32]>, FrameError> {
    let mut r = Reader::new(rest, "Parse");
    let n = usize::try_from(r.i16()?).map_err(|_| FrameError::Malformed { what: "Parse" })?;
    let mut types = Vec::with_capacity(n);
    for _ in 0..n {
        types.push(r.i32()? as u32);
    }
    Ok(types.into_boxed_slice())
}

/// Appends the values of a Bind body after its portal and statement names (`rest`) to
/// `out`, with the type of each from the statement's Parse (`types`; 0 where the server
/// infers it).
pub fn bind_values<'a>(
    rest: &'a [u8],
    types: &[u32],
    out: &mut Vec<Param<'a>>,
) -> Result<(), FrameError> {
    let malformed = || FrameError::Malformed { what: "Bind" };
    let mut r = Reader::new(rest, "Bind");
    let nformats = usize::try_from(r.i16()?).map_err(|_| malformed())?;
    let formats = r.bytes(nformats * 2)?;
    let nparams = usize::try_from(r.i16()?).map_err(|_| malformed())?;
    // Zero format codes: all text; one: all in that format; else one each.
    if nformats > 1 && nformats != nparams {
        return Err(malformed());
    }
    out.reserve(nparams);
    for i in 0..nparams {
        let code = match nformats {
            0 => 0,
            1 => i16::from_be_bytes([formats[0], formats[1]]),
            _ => i16::from_be_bytes([formats[2 * i], formats[2 * i + 1]]),
        };
        let format = match code {
            0 => ParamFormat::Text,
            1 => ParamFormat::Binary,
            _ => return Err(malformed()),
        };
        let len = r.i32()?;
        let value = if len < 0 {
            None
        } else {
            Some(Cow::Borrowed(r.bytes(len as usize)?))
        };
        out.push(Param {
            type_id: types.get(i).copied().unwrap_or(0),
            format,
            value,
        });
    }
    Ok(())
}

/// How a held PostgreSQL command is shown to its reviewers: each bound value decoded
/// ([`show`]) with the type its Parse declared and masked ([`mask_shown`]), and, where the rule
/// asks, the [dry run](super::dry_run).
#[derive(Debug, Clone)]
pub struct Reviewer {
    masker: Masker,
    /// Where a dry run connects (`None`: none is run, a rule asking for one is told so).
    upstream: Option<Arc<Upstream>>,
}

impl Reviewer {
    /// A reviewer masking with `masker`, running dry runs against `upstream`.
    pub fn new(masker: Masker, upstream: Option<Upstream>) -> Self {
        Self {
            masker,
            upstream: upstream.map(Arc::new),
        }
    }
}

impl Preview for Reviewer {
    fn preview(
        &self,
        command: Command<'static>,
        facts: Arc<Facts>,
        ask: PreviewAsk,
    ) -> PreviewFuture {
        let text = command.text().into_owned();
        let mut params: Vec<ShownParam> = command
            .params()
            .iter()
            .zip(1u32..)
            .map(|(p, n)| show(n, p.type_id, p))
            .collect();
        mask_shown(&self.masker, &ask.mask, &text, &mut params);
        if !ask.dry_run {
            return Box::pin(std::future::ready(Previewed {
                params,
                dry_run: None,
            }));
        }
        let Some(upstream) = self.upstream.clone() else {
            return Box::pin(std::future::ready(Previewed {
                params,
                dry_run: Some(DryRun::skipped(
                    "this gateway has no connection to run the dry run on",
                )),
            }));
        };
        let masker = self.masker.clone();
        Box::pin(async move {
            // The role the approved statement would run as; else the one the session starts in.
            let role = ask.run_as.clone().or_else(|| upstream.pg.run_as.clone());
            let dry = super::dry_run::run(super::dry_run::Job {
                upstream: &upstream,
                sql: &text,
                facts: &facts,
                params: command.params(),
                role: role.as_deref(),
                masker: &masker,
                mask: &ask.mask,
            })
            .await;
            Previewed {
                params,
                dry_run: Some(dry),
            }
        })
    }
}

/// Masks the values shown to reviewers as the answer's `mask` rules would mask them: a value
/// bound to a column a column rule covers (`SET col = $1`, `col = $2`, `INSERT (col) VALUES
/// ($1)`, see [`param_columns`]) is replaced whole (`[REDACTED]`, whatever the rule's style:
/// a partial value of a secret still tells), and every other text value goes through the
/// rules' detectors. Hex values are not scanned (their text is not the value's). A masking
/// failure hides the value rather than show it.
pub fn mask_shown(masker: &Masker, mask: &[String], sql: &str, params: &mut [ShownParam]) {
    if params.is_empty() {
        return;
    }
    let columns = param_columns(sql);
    for p in params.iter_mut() {
        if let Some((table, column)) = columns.get(&p.n) {
            p.column = Some(format!("{table}.{column}"));
        }
    }
    if mask.is_empty() {
        return;
    }
    let column_rules = masker.column_rules(mask).unwrap_or_default();
    for p in params.iter_mut() {
        let bound = columns.get(&p.n);
        let Some(value) = p.value.take() else {
            continue;
        };
        if let Some((table, column)) = bound {
            let (schema, table) = match table.rsplit_once('.') {
                Some((s, t)) => (Some(s.trim_matches('"')), t.trim_matches('"')),
                None => (None, table.trim_matches('"')),
            };
            if let Some(rule) = column_rules
                .iter()
                .find(|r| masker.rule_may_mask(**r, schema, table, Some(column)))
            {
                p.value = Some(String::from_utf8_lossy(crate::mask::REDACTED).into_owned());
                p.masked.push(masker.rule_name(*rule).to_owned());
                continue;
            }
        }
        if p.shown_as != "text" {
            p.value = Some(value);
            continue;
        }
        let col = ColumnRef::computed("", ValueKind::Text, p.type_id, ValueFormat::Text);
        let mut out = BytesMut::new();
        let masked = masker.plan(&[col], mask).and_then(|mut plan| {
            let o = plan.mask_value(0, value.as_bytes(), &mut out)?;
            Ok((o, plan))
        });
        p.value = match masked {
            Ok((MaskOutcome::Unchanged, _)) => Some(value),
            Ok((MaskOutcome::Replaced { rules }, plan)) => {
                p.masked
                    .extend(rules.iter().map(|r| plan.rule_name(r).to_owned()));
                Some(String::from_utf8_lossy(&out).into_owned())
            }
            Ok((MaskOutcome::Null { rule }, plan)) => {
                p.masked.push(plan.rule_name(rule).to_owned());
                Some(String::from_utf8_lossy(crate::mask::REDACTED).into_owned())
            }
            Err(e) => {
                tracing::warn!(param = p.n, error = %e, "parameter not shown: masking failed");
                p.masked.push("error".into());
                Some(String::from_utf8_lossy(crate::mask::REDACTED).into_owned())
            }
        };
    }
}

/// The name of a type OID reviewers read (`oid <n>` for the ones not named here).
pub fn type_name(type_oid: u32) -> Cow<'static, str> {
    Cow::Borrowed(match type_oid {
        0 => "unspecified",
        oid::BOOL => "bool",
        oid::BYTEA => "bytea",
        oid::NAME => "name",
        oid::INT8 => "int8",
        oid::INT2 => "int2",
        oid::INT4 => "int4",
        oid::TEXT => "text",
        oid::OID => "oid",
        oid::JSON => "json",
        oid::XML => "xml",
        oid::FLOAT4 => "float4",
        oid::FLOAT8 => "float8",
        oid::UNKNOWN => "unknown",
        oid::INET => "inet",
        oid::CIDR => "cidr",
        oid::BPCHAR => "bpchar",
        oid::VARCHAR => "varchar",
        oid::DATE => "date",
        oid::TIME => "time",
        oid::TIMESTAMP => "timestamp",
        oid::TIMESTAMPTZ => "timestamptz",
        oid::INTERVAL => "interval",
        oid::UUID => "uuid",
        oid::JSONB => "jsonb",
        NUMERIC => "numeric",
        other => return Cow::Owned(format!("oid {other}")),
    })
}

const NUMERIC: u32 = 1700;

/// One parameter for a reviewer: text values as they are (UTF-8, lossily), binary values of
/// the common types decoded, anything else as `\x…` hex. `type_oid` is the parameter's type as
/// the server resolved it (the Parse's, or the statement's description when that left it to
/// the server). Not masked: see [`mask_shown`].
pub fn show(n: u32, type_oid: u32, p: &Param<'_>) -> ShownParam {
    let (value, shown_as) = match (&p.value, p.format) {
        (None, _) => (None, "text"),
        (Some(v), ParamFormat::Text) => (Some(String::from_utf8_lossy(v).into_owned()), "text"),
        (Some(v), ParamFormat::Binary) => match decode_binary(type_oid, v) {
            Some(s) => (Some(s), "text"),
            None => (Some(hex(v)), "hex"),
        },
    };
    ShownParam {
        n,
        type_name: type_name(type_oid).into_owned(),
        type_id: type_oid,
        format: p.format,
        value,
        shown_as: shown_as.into(),
        masked: Vec::new(),
        column: None,
    }
}

/// `\x` and the bytes in hex, as PostgreSQL writes bytea.
pub fn hex(v: &[u8]) -> String {
    let mut s = String::with_capacity(2 + v.len() * 2);
    s.push_str("\\x");
    for b in v {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The text form of a binary value of a common type; `None` when the type is not one of
/// them or the bytes are not a valid value of it.
fn decode_binary(type_oid: u32, v: &[u8]) -> Option<String> {
    let epoch = || chrono::NaiveDate::from_ymd_opt(2000, 1, 1);
    Some(match type_oid {
        oid::BOOL => pg::bool_from_sql(v).ok()?.to_string(),
        oid::INT2 => pg::int2_from_sql(v).ok()?.to_string(),
        oid::INT4 => pg::int4_from_sql(v).ok()?.to_string(),
        oid::INT8 => pg::int8_from_sql(v).ok()?.to_string(),
        oid::OID => pg::oid_from_sql(v).ok()?.to_string(),
        oid::FLOAT4 => pg::float4_from_sql(v).ok()?.to_string(),
        oid::FLOAT8 => pg::float8_from_sql(v).ok()?.to_string(),
        oid::TEXT
        | oid::VARCHAR
        | oid::BPCHAR
        | oid::NAME
        | oid::UNKNOWN
        | oid::XML
        | oid::JSON => pg::text_from_sql(v).ok()?.to_owned(),
        oid::JSONB => match v.split_first() {
            Some((1, rest)) => pg::text_from_sql(rest).ok()?.to_owned(),
            _ => return None,
        },
        oid::BYTEA => hex(pg::bytea_from_sql(v)),
        oid::UUID => {
            let u = pg::uuid_from_sql(v).ok()?;
            let h = hex(&u);
            let h = &h[2..];
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        oid::DATE => {
            let days = pg::date_from_sql(v).ok()?;
            epoch()?
                .checked_add_signed(chrono::TimeDelta::try_days(i64::from(days))?)?
                .to_string()
        }
        oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            let us = pg::timestamp_from_sql(v).ok()?;
            // PostgreSQL's ±infinity are i64::MAX and i64::MIN; any value past chrono's
            // range is the client's to choose, so the sum is checked (`+` panics on it).
            match us {
                i64::MAX => return Some("infinity".into()),
                i64::MIN => return Some("-infinity".into()),
                _ => {}
            }
            let t = epoch()?
                .and_hms_opt(0, 0, 0)?
                .checked_add_signed(chrono::TimeDelta::microseconds(us))?;
            if type_oid == oid::TIMESTAMPTZ {
                format!("{}+00", t.format("%Y-%m-%d %H:%M:%S%.f"))
            } else {
                t.format("%Y-%m-%d %H:%M:%S%.f").to_string()
            }
        }
        oid::INET | oid::CIDR => {
            let i = pg::inet_from_sql(v).ok()?;
            format!("{}/{}", i.addr(), i.netmask())
        }
        NUMERIC => numeric_text(v)?,
        _ => return None,
    })
}

/// The text of a binary `numeric`: a count of base-10000 digits, the weight of the first,
/// the sign and the display scale, then the digits.
fn numeric_text(v: &[u8]) -> Option<String> {
    let mut r = Reader::new(v, "numeric");
    let ndigits = usize::try_from(r.i16().ok()?).ok()?;
    let weight = i32::from(r.i16().ok()?);
    let sign = r.i16().ok()? as u16;
    let dscale = usize::try_from(r.i16().ok()?).ok()?;
    let mut digits = Vec::with_capacity(ndigits);
    for _ in 0..ndigits {
        let d = r.i16().ok()?;
        if !(0..10000).contains(&d) {
            return None;
        }
        digits.push(d);
    }
    if !r.rest().is_empty() {
        return None;
    }
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    // Integer part: digit groups 0..=weight.
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            let d = digits.get(i as usize).copied().unwrap_or(0);
            if i == 0 {
                s.push_str(&d.to_string());
            } else {
                s.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            let d = if i < 0 {
                0
            } else {
                digits.get(i as usize).copied().unwrap_or(0)
            };
            frac.push_str(&format!("{d:04}"));
            i += 1;
        }
        frac.truncate(dscale);
        s.push_str(&frac);
    }
    Some(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bind_rest(formats: &[i16], values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    }

    #[test]
    fn bind_values_borrow_the_wire() {
        let rest = bind_rest(&[0, 1], &[Some(b"42"), Some(&7i32.to_be_bytes())]);
        let mut out = Vec::new();
        bind_values(&rest, &[0, oid::INT4], &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].format, ParamFormat::Text);
        assert_eq!(out[0].type_id, 0);
        assert!(matches!(out[0].value, Some(Cow::Borrowed(b"42"))));
        assert_eq!(show(2, oid::INT4, &out[1]).value.as_deref(), Some("7"));
        // One format code applies to all; a NULL has no bytes.
        let rest = bind_rest(&[1], &[None, Some(&[1])]);
        let mut out = Vec::new();
        bind_values(&rest, &[oid::INT4, oid::BOOL], &mut out).unwrap();
        assert!(out[0].value.is_none() && out[1].format == ParamFormat::Binary);
        assert_eq!(show(2, oid::BOOL, &out[1]).value.as_deref(), Some("true"));
        // Truncated, or a format count that does not match: malformed.
        assert!(bind_values(&rest[..rest.len() - 4], &[], &mut Vec::new()).is_err());
        let bad = bind_rest(&[0, 0, 0], &[Some(b"1")]);
        assert!(bind_values(&bad, &[], &mut Vec::new()).is_err());
        assert_eq!(
            &parse_types(&[0, 2, 0, 0, 0, 23, 0, 0, 0, 25]).unwrap()[..],
            &[23, 25]
        );
    }

    #[test]
    fn binary_values_decoded_or_hex() {
        let p = |v: &[u8]| Param {
            type_id: 0,
            format: ParamFormat::Binary,
            value: Some(Cow::Owned(v.to_vec())),
        };
        let s = |t: u32, v: &[u8]| show(1, t, &p(v));
        assert_eq!(s(oid::INT8, &(-5i64).to_be_bytes()).value.unwrap(), "-5");
        assert_eq!(s(oid::FLOAT8, &1.5f64.to_be_bytes()).value.unwrap(), "1.5");
        assert_eq!(s(oid::TEXT, b"hi").value.unwrap(), "hi");
        assert_eq!(s(oid::JSONB, b"\x01{\"a\":1}").value.unwrap(), "{\"a\":1}");
        assert_eq!(s(oid::BYTEA, &[0xde, 0xad]).value.unwrap(), "\\xdead");
        assert_eq!(
            s(oid::DATE, &366i32.to_be_bytes()).value.unwrap(),
            "2001-01-01"
        );
        assert_eq!(
            s(oid::TIMESTAMP, &1_500_000i64.to_be_bytes())
                .value
                .unwrap(),
            "2000-01-01 00:00:01.500"
        );
        let uuid: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            s(oid::UUID, &uuid).value.unwrap(),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
        // numeric 12345.670 = digits [1, 2345, 6700], weight 1, dscale 3; -0.05 likewise.
        let num = |nd: i16, w: i16, sign: u16, scale: i16, d: &[i16]| {
            let mut b = Vec::new();
            for x in [nd, w, sign as i16, scale] {
                b.extend_from_slice(&x.to_be_bytes());
            }
            for x in d {
                b.extend_from_slice(&x.to_be_bytes());
            }
            b
        };
        assert_eq!(
            s(NUMERIC, &num(3, 1, 0, 3, &[1, 2345, 6700]))
                .value
                .unwrap(),
            "12345.670"
        );
        assert_eq!(
            s(NUMERIC, &num(1, -1, 0x4000, 2, &[500])).value.unwrap(),
            "-0.05"
        );
        // An unknown type, or bytes that are not a valid value: hex, with the type OID.
        let h = s(600, &[1, 2, 3]);
        assert_eq!(
            (h.value.unwrap().as_str(), h.shown_as.as_str()),
            ("\\x010203", "hex")
        );
        assert_eq!(h.type_name, "oid 600");
        assert_eq!(s(oid::INT4, &[1, 2]).shown_as, "hex");
    }

    #[test]
    fn timestamps_past_the_calendar_are_shown_not_a_panic() {
        // A client's binary timestamp is any i64: adding i64::MAX - 1 microseconds to the
        // epoch used to panic (chrono's `+` overflows); ±infinity are PostgreSQL's own values.
        let p = |v: i64| Param {
            type_id: 0,
            format: ParamFormat::Binary,
            value: Some(Cow::Owned(v.to_be_bytes().to_vec())),
        };
        for t in [oid::TIMESTAMP, oid::TIMESTAMPTZ] {
            assert_eq!(show(1, t, &p(i64::MAX)).value.unwrap(), "infinity");
            assert_eq!(show(1, t, &p(i64::MIN)).value.unwrap(), "-infinity");
            for v in [i64::MAX - 1, i64::MIN + 1] {
                let shown = show(1, t, &p(v));
                assert_eq!(shown.shown_as, "hex", "{v}");
                assert_eq!(shown.value.unwrap(), hex(&v.to_be_bytes()));
            }
        }
    }
}
