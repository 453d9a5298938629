//! Content detectors: one left-to-right pass over a value with hand-written validators.
//!
//! The scan splits the value into runs of "token" bytes (ASCII alphanumerics and `_ - + /`) and
//! dispatches on the first byte of each run; that first-byte test is the literal prefilter, so
//! a validator only runs where its pattern can start (a digit for numbers, `A` for AWS and GCP
//! keys, `eyJ` for JWTs, `-----BEGIN` for key blocks, `@` for e-mail). Every validator checks
//! the real structure (Luhn, mod-97, octet ranges, JSON header) so near misses are left alone.
//! See docs/decisions/masking-engine.md for why this beats a RegexSet here.

use crate::config::policy::Detector;

/// Number of [`Detector`] variants; indexes tables keyed by detector.
pub(crate) const DETECTOR_COUNT: usize = 11;

/// Every detector, in a fixed order ([`Detector`] as usize indexes into it).
pub(crate) const ALL_DETECTORS: [Detector; DETECTOR_COUNT] = [
    Detector::Email,
    Detector::Card,
    Detector::Iban,
    Detector::Ssn,
    Detector::Phone,
    Detector::Ip,
    Detector::AwsKey,
    Detector::CloudKey,
    Detector::Jwt,
    Detector::PrivateKey,
    Detector::HighEntropy,
];

/// A set of detectors as a bit mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DetectorSet(u16);

impl DetectorSet {
    pub(crate) fn insert(&mut self, d: Detector) {
        self.0 |= 1 << (d as u16);
    }
    #[inline]
    pub(crate) fn has(self, d: Detector) -> bool {
        self.0 & (1 << (d as u16)) != 0
    }
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// One detected span, `start..end` in the scanned value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Match {
    pub start: usize,
    pub end: usize,
    pub detector: Detector,
}

const DIGIT: u8 = 1;
const UPPER: u8 = 2;
const LOWER: u8 = 4;
const PUNCT: u8 = 8; // `_ - + /`: part of tokens (base64, slugs, keys)
const HEX: u8 = 16;
const ALPHA: u8 = UPPER | LOWER;
const ALNUM: u8 = DIGIT | ALPHA;
const TOKEN: u8 = ALNUM | PUNCT;

const fn class_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if b.is_ascii_digit() {
            c |= DIGIT | HEX;
        }
        if b.is_ascii_uppercase() {
            c |= UPPER;
        }
        if b.is_ascii_lowercase() {
            c |= LOWER;
        }
        if matches!(b, b'a'..=b'f' | b'A'..=b'F') {
            c |= HEX;
        }
        if matches!(b, b'_' | b'-' | b'+' | b'/') {
            c |= PUNCT;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CLASS: [u8; 256] = class_table();

#[inline(always)]
fn class(b: u8) -> u8 {
    CLASS[b as usize]
}
#[inline(always)]
fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}
#[inline(always)]
fn is_alnum(b: u8) -> bool {
    class(b) & ALNUM != 0
}
#[inline(always)]
fn at(v: &[u8], i: usize) -> u8 {
    // Out-of-range reads as a NUL separator, which simplifies boundary checks.
    if i < v.len() { v[i] } else { 0 }
}

/// Scans `v` for the detectors in `set`, appending matches in increasing, non-overlapping
/// order to `out` (which the caller clears).
///
/// Every pattern contains a digit, an upper-case letter, `@`, `:` or `=` (e-mail needs `@`,
/// numbers and addresses digits, key prefixes and JWT headers capitals, random tokens both),
/// so the scan jumps from one such trigger byte to the next eight bytes at a time and only
/// looks at the tokens that hold one; runs of lower-case prose cost a few instructions per
/// eight bytes.
pub(crate) fn scan(v: &[u8], set: DetectorSet, out: &mut Vec<Match>) {
    if set.is_empty() {
        return;
    }
    let n = v.len();
    // Everything before `i` has been looked at.
    let mut i = 0;
    while let Some(p) = next_trigger(v, i) {
        let b = v[p];
        if class(b) & TOKEN == 0 {
            let found = match b {
                b'@' if set.has(Detector::Email) => email(v, p, out),
                b':' if set.has(Detector::Ip) => colon(v, i, p),
                b'=' if set.has(Detector::CloudKey) => {
                    let s = token_start(v, i, p);
                    azure_key(v, s, p)
                }
                _ => None,
            };
            match found {
                Some((s, e, d)) => {
                    out.push(Match {
                        start: s,
                        end: e,
                        detector: d,
                    });
                    i = e;
                }
                None => i = p + 1,
            }
            continue;
        }
        let s = token_start(v, i, p);
        let mut j = p + 1;
        while j < n && class(v[j]) & TOKEN != 0 {
            j += 1;
        }
        match token(v, s, j, set) {
            Some((ms, me, d)) => {
                out.push(Match {
                    start: ms,
                    end: me,
                    detector: d,
                });
                i = me.max(s + 1);
            }
            None => i = j,
        }
    }
}

/// Start of the token run holding `p`, not before `floor`.
#[inline]
fn token_start(v: &[u8], floor: usize, p: usize) -> usize {
    let mut s = p;
    while s > floor && class(v[s - 1]) & TOKEN != 0 {
        s -= 1;
    }
    s
}

/// Trigger bytes: `0-9 : ; < =` (0x30–0x3D) and `@ A-Z` (0x40–0x5A).
#[inline(always)]
pub(crate) fn is_trigger(b: u8) -> bool {
    matches!(b, 0x30..=0x3D | 0x40..=0x5A)
}

/// Bytes of `x` (little-endian lanes) in the trigger ranges get their high bit set; exact per
/// byte (no borrow crosses lanes: "hasbetween" from Bit Twiddling Hacks).
#[inline(always)]
fn trigger_mask(x: u64) -> u64 {
    const L: u64 = 0x0101_0101_0101_0101;
    let lo7 = x & (L * 127);
    let digits = (L * (127 + 0x3E)).wrapping_sub(lo7) & !x & (lo7 + L * (127 - 0x2F)) & (L * 128);
    let upper = (L * (127 + 0x5B)).wrapping_sub(lo7) & !x & (lo7 + L * (127 - 0x3F)) & (L * 128);
    digits | upper
}

/// Position of the first trigger byte at or after `from`.
#[inline]
pub(crate) fn next_trigger(v: &[u8], from: usize) -> Option<usize> {
    let mut k = from;
    while let Some(chunk) = v.get(k..k + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let m = trigger_mask(u64::from_le_bytes(w));
        if m != 0 {
            return Some(k + (m.trailing_zeros() / 8) as usize);
        }
        k += 8;
    }
    (k..v.len()).find(|&k| is_trigger(v[k]))
}

/// At a `:`: an IPv6 address starting with the hex group before it, or with `::`.
fn colon(v: &[u8], floor: usize, p: usize) -> Option<(usize, usize, Detector)> {
    let mut s = p;
    while s > floor && p - s < 4 && class(v[s - 1]) & HEX != 0 {
        s -= 1;
    }
    let starts_clean = |s: usize| s == 0 || (class(v[s - 1]) & TOKEN == 0 && v[s - 1] != b':');
    if s < p && starts_clean(s) {
        return ipv6(v, s).map(|e| (s, e, Detector::Ip));
    }
    if s == p && at(v, p + 1) == b':' && starts_clean(p) {
        return ipv6(v, p).map(|e| (p, e, Detector::Ip));
    }
    None
}

/// Tries every detector that can start a match at the token `v[i..j]`.
#[inline]
fn token(v: &[u8], i: usize, j: usize, set: DetectorSet) -> Option<(usize, usize, Detector)> {
    let len = j - i;
    let b0 = v[i];
    let c0 = class(b0);
    let next = at(v, j);
    if next == b':'
        && len <= 4
        && set.has(Detector::Ip)
        && v[i..j].iter().all(|&b| class(b) & HEX != 0)
        && let Some(e) = ipv6(v, i)
    {
        return Some((i, e, Detector::Ip));
    }
    if c0 & DIGIT != 0 {
        if set.has(Detector::Ip)
            && next == b'.'
            && !preceded_by_dotted_number(v, i)
            && let Some(e) = ipv4(v, i)
        {
            return Some((i, e, Detector::Ip));
        }
        if set.has(Detector::Ssn)
            && !preceded_by_digit_group(v, i)
            && let Some(e) = ssn(v, i)
        {
            return Some((i, e, Detector::Ssn));
        }
        if set.has(Detector::Card)
            && matches!(b0, b'2'..=b'6')
            && !preceded_by_digit_group(v, i)
            && let Some(e) = card(v, i)
        {
            return Some((i, e, Detector::Card));
        }
        if set.has(Detector::Phone) && !preceded_by_digit_group(v, i) {
            if i > 0
                && v[i - 1] == b'('
                && let Some(e) = nanp_phone(v, i - 1)
            {
                return Some((i - 1, e, Detector::Phone));
            }
            if let Some(e) = nanp_phone(v, i) {
                return Some((i, e, Detector::Phone));
            }
        }
    } else if b0 == b'+' {
        if set.has(Detector::Phone)
            && is_digit(at(v, i + 1))
            && !preceded_by_digit_group(v, i)
            && let Some(e) = intl_phone(v, i)
        {
            return Some((i, e, Detector::Phone));
        }
    } else if c0 & UPPER != 0 {
        if set.has(Detector::Iban)
            && len >= 4
            && class(v[i + 1]) & UPPER != 0
            && is_digit(v[i + 2])
            && is_digit(v[i + 3])
            && let Some(e) = iban(v, i)
        {
            return Some((i, e, Detector::Iban));
        }
        if b0 == b'A' {
            if set.has(Detector::AwsKey) && len == 20 && aws_access_key(&v[i..j]) {
                return Some((i, j, Detector::AwsKey));
            }
            if set.has(Detector::CloudKey) {
                if len == 39 && v[i..].starts_with(b"AIza") {
                    return Some((i, j, Detector::CloudKey));
                }
                if let Some(m) = azure_key(v, i, j) {
                    return Some(m);
                }
            }
        } else if b0 == b'S'
            && set.has(Detector::CloudKey)
            && let Some(m) = azure_key(v, i, j)
        {
            return Some(m);
        }
    } else if c0 & LOWER != 0 {
        if b0 == b'e'
            && set.has(Detector::Jwt)
            && v[i..].starts_with(b"eyJ")
            && let Some(e) = jwt(v, i)
        {
            return Some((i, e, Detector::Jwt));
        }
        if set.has(Detector::CloudKey) && cloud_token(&v[i..j]) {
            return Some((i, j, Detector::CloudKey));
        }
        if b0 == b's'
            && set.has(Detector::CloudKey)
            && let Some(m) = azure_key(v, i, j)
        {
            return Some(m);
        }
    } else if b0 == b'-'
        && set.has(Detector::PrivateKey)
        && v[i..].starts_with(b"-----BEGIN ")
        && let Some(e) = private_key(v, i)
    {
        return Some((i, e, Detector::PrivateKey));
    }
    if len == 40 && set.has(Detector::AwsKey) && aws_secret_key(&v[i..j]) {
        return Some((i, j, Detector::AwsKey));
    }
    if len >= HIGH_ENTROPY_MIN_LEN && set.has(Detector::HighEntropy) && high_entropy(&v[i..j]) {
        return Some((i, j, Detector::HighEntropy));
    }
    None
}

/// `1.2.3.4.5`: a number right after `digit.` is the tail of a dotted number, not a start.
fn preceded_by_dotted_number(v: &[u8], i: usize) -> bool {
    i >= 2 && v[i - 1] == b'.' && is_digit(v[i - 2])
}

/// A number right after `digit-` or `digit.` continues an earlier digit group; only a group
/// that starts a number may start a card, SSN or phone match.
fn preceded_by_digit_group(v: &[u8], i: usize) -> bool {
    i >= 2 && matches!(v[i - 1], b'-' | b'.') && is_digit(v[i - 2])
}

/// The end of a number must not run on into more of the same number.
fn number_ends(v: &[u8], e: usize) -> bool {
    let b = at(v, e);
    let continues = matches!(b, b'-' | b'.' | b'/') && is_digit(at(v, e + 1));
    !is_alnum(b) && !continues
}

// ---------------------------------------------------------------------------------------------
// e-mail

/// Called at `@`: walks back over the local part and forward over the domain.
fn email(v: &[u8], at_pos: usize, out: &mut Vec<Match>) -> Option<(usize, usize, Detector)> {
    const LOCAL_MAX: usize = 64;
    let mut s = at_pos;
    while s > 0
        && at_pos - s < LOCAL_MAX
        && (is_alnum(v[s - 1]) || matches!(v[s - 1], b'.' | b'_' | b'%' | b'+' | b'-' | b'\''))
    {
        s -= 1;
    }
    while s < at_pos && matches!(v[s], b'.' | b'\'') {
        s += 1;
    }
    if s == at_pos {
        return None;
    }
    let n = v.len();
    let mut e = at_pos + 1;
    while e < n && (is_alnum(v[e]) || v[e] == b'.' || v[e] == b'-') {
        e += 1;
    }
    while e > at_pos + 1 && matches!(v[e - 1], b'.' | b'-') {
        e -= 1;
    }
    let domain = &v[at_pos + 1..e];
    let last_dot = domain.iter().rposition(|&b| b == b'.')?;
    let tld = &domain[last_dot + 1..];
    if tld.len() < 2 || !tld.iter().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    if domain[0] == b'.' || domain[0] == b'-' || domain.windows(2).any(|w| w == b"..") {
        return None;
    }
    // Tokens of the local part were scanned before the `@` was seen; the e-mail supersedes
    // any match inside it (a match straddling its start shortens it instead).
    while let Some(last) = out.last() {
        if last.end <= s {
            break;
        }
        if last.start >= s {
            out.pop();
        } else {
            s = last.end;
            break;
        }
    }
    if s >= at_pos {
        return None;
    }
    Some((s, e, Detector::Email))
}

// ---------------------------------------------------------------------------------------------
// numbers: card, SSN, phone

/// Card numbers: 13–19 digits, optionally grouped by one kind of separator (space or dash),
/// issuer prefix 2–6, Luhn-valid. The longest valid prefix ending at a group boundary wins.
fn card(v: &[u8], i: usize) -> Option<usize> {
    // Most numbers (ids, years, phone groups) are too short: count before setting up buffers.
    let (mut k, mut seen) = (i, 0);
    while seen < 13 {
        let b = at(v, k);
        if is_digit(b) {
            seen += 1;
        } else if !((b == b' ' || b == b'-') && is_digit(at(v, k + 1))) {
            return None;
        }
        k += 1;
    }
    let mut digits = [0u8; 19];
    let mut count = 0usize;
    let mut k = i;
    let mut sep = 0u8;
    // Group boundaries: (digit count, byte end).
    let mut ends = [(0usize, 0usize); 19];
    let mut n_ends = 0;
    loop {
        while is_digit(at(v, k)) {
            if count == 19 {
                // Too many digits in one group run: not a card.
                return longest_card(&digits, &ends[..n_ends], v);
            }
            digits[count] = v[k] - b'0';
            count += 1;
            k += 1;
        }
        if n_ends < ends.len() {
            ends[n_ends] = (count, k);
            n_ends += 1;
        }
        let b = at(v, k);
        if (b == b' ' || b == b'-') && (sep == 0 || sep == b) && is_digit(at(v, k + 1)) {
            sep = b;
            k += 1;
            continue;
        }
        break;
    }
    longest_card(&digits, &ends[..n_ends], v)
}

fn longest_card(digits: &[u8; 19], ends: &[(usize, usize)], v: &[u8]) -> Option<usize> {
    ends.iter().rev().find_map(|&(count, end)| {
        ((13..=19).contains(&count) && number_ends(v, end) && luhn(&digits[..count])).then_some(end)
    })
}

/// The Luhn checksum over digit values (0–9).
pub(crate) fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, &d) in digits.iter().rev().enumerate() {
        let mut d = u32::from(d);
        if k % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// Reads exactly `count` digits at `k`; returns their value.
fn digits_at(v: &[u8], k: usize, count: usize) -> Option<u32> {
    let mut x = 0u32;
    for o in 0..count {
        let b = at(v, k + o);
        if !is_digit(b) {
            return None;
        }
        x = x * 10 + u32::from(b - b'0');
    }
    Some(x)
}

/// US SSN `AAA-GG-SSSS` (or with spaces): area not 000, 666 or 9xx; group and serial non-zero.
fn ssn(v: &[u8], i: usize) -> Option<usize> {
    let area = digits_at(v, i, 3)?;
    let sep = at(v, i + 3);
    if sep != b'-' && sep != b' ' {
        return None;
    }
    let group = digits_at(v, i + 4, 2)?;
    if at(v, i + 6) != sep {
        return None;
    }
    let serial = digits_at(v, i + 7, 4)?;
    let e = i + 11;
    if !number_ends(v, e) || area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return None;
    }
    Some(e)
}

/// North American numbers with visible structure: `[1 ](NNN) NNN-NNNN`, `NNN-NNN-NNNN`,
/// `NNN.NNN.NNNN`, `NNN NNN NNNN`, `1-NNN-NNN-NNNN`. A bare run of ten digits is not taken:
/// it is as likely an id.
fn nanp_phone(v: &[u8], i: usize) -> Option<usize> {
    let mut k = i;
    // Optional leading country code 1 and a separator.
    if at(v, k) == b'1' && matches!(at(v, k + 1), b' ' | b'-' | b'.') {
        let after = at(v, k + 2);
        if (after == b'(' || is_digit(after))
            && let Some(e) = nanp_body(v, k + 2)
        {
            return Some(e);
        }
    }
    if at(v, k) == b'(' {
        digits_at(v, k + 1, 3)?;
        if at(v, k + 4) != b')' {
            return None;
        }
        k += 5;
        if matches!(at(v, k), b' ' | b'-' | b'.') {
            k += 1;
        }
        return nanp_tail(v, k);
    }
    nanp_body(v, k)
}

fn nanp_body(v: &[u8], k: usize) -> Option<usize> {
    if at(v, k) == b'(' {
        digits_at(v, k + 1, 3)?;
        if at(v, k + 4) != b')' {
            return None;
        }
        let mut k = k + 5;
        if matches!(at(v, k), b' ' | b'-' | b'.') {
            k += 1;
        }
        return nanp_tail(v, k);
    }
    digits_at(v, k, 3)?;
    let sep = at(v, k + 3);
    if !matches!(sep, b' ' | b'-' | b'.') {
        return None;
    }
    digits_at(v, k + 4, 3)?;
    if at(v, k + 7) != sep {
        return None;
    }
    digits_at(v, k + 8, 4)?;
    let e = k + 12;
    number_ends(v, e).then_some(e)
}

fn nanp_tail(v: &[u8], k: usize) -> Option<usize> {
    digits_at(v, k, 3)?;
    if !matches!(at(v, k + 3), b'-' | b'.' | b' ') {
        return None;
    }
    digits_at(v, k + 4, 4)?;
    let e = k + 8;
    number_ends(v, e).then_some(e)
}

/// International `+CC ...`: 8–15 digits in groups separated by one space, dash or dot, with an
/// optional parenthesised group (`+44 (0)20 7946 0958`).
fn intl_phone(v: &[u8], i: usize) -> Option<usize> {
    let mut k = i + 1;
    let mut digits = 0;
    let mut end = k;
    loop {
        let b = at(v, k);
        if is_digit(b) {
            digits += 1;
            k += 1;
            end = k;
            if digits > 15 {
                return None;
            }
        } else if matches!(b, b' ' | b'-' | b'.')
            && (is_digit(at(v, k + 1)) || at(v, k + 1) == b'(')
        {
            k += 1;
        } else if b == b'(' && is_digit(at(v, k + 1)) {
            let mut m = k + 1;
            while is_digit(at(v, m)) && m - k <= 4 {
                m += 1;
            }
            if at(v, m) != b')' {
                break;
            }
            digits += m - k - 1;
            k = m + 1;
            end = k;
            if at(v, k) == b' ' && is_digit(at(v, k + 1)) {
                k += 1;
            }
        } else {
            break;
        }
    }
    ((8..=15).contains(&digits) && !is_alnum(at(v, end))).then_some(end)
}

// ---------------------------------------------------------------------------------------------
// IP addresses

/// Dotted quad, octets 0–255 without leading zeros, optional `/prefix`.
fn ipv4(v: &[u8], i: usize) -> Option<usize> {
    let mut k = i;
    for part in 0..4 {
        if part > 0 {
            if at(v, k) != b'.' {
                return None;
            }
            k += 1;
        }
        let s = k;
        let mut x = 0u32;
        while is_digit(at(v, k)) && k - s < 3 {
            x = x * 10 + u32::from(v[k] - b'0');
            k += 1;
        }
        if k == s || x > 255 || (k - s > 1 && v[s] == b'0') || is_digit(at(v, k)) {
            return None;
        }
    }
    if at(v, k) == b'.' && is_digit(at(v, k + 1)) {
        return None;
    }
    if at(v, k) == b'/'
        && let Some(p) = digits_at(v, k + 1, 2).or_else(|| digits_at(v, k + 1, 1))
    {
        let w = if is_digit(at(v, k + 2)) { 2 } else { 1 };
        if p <= 32 && !is_alnum(at(v, k + 1 + w)) {
            return Some(k + 1 + w);
        }
    }
    (!is_alnum(at(v, k))).then_some(k)
}

/// Hex groups and colons (and a trailing dotted quad), checked by the standard parser.
fn ipv6(v: &[u8], i: usize) -> Option<usize> {
    let n = v.len();
    let mut e = i;
    let mut colons = 0;
    while e < n && (class(v[e]) & HEX != 0 || v[e] == b':' || v[e] == b'.') && e - i < 45 {
        colons += usize::from(v[e] == b':');
        e += 1;
    }
    if colons < 2 || is_alnum(at(v, e)) {
        return None;
    }
    let mut span = &v[i..e];
    while let [rest @ .., b'.'] = span {
        span = rest;
    }
    if span.ends_with(b":") && !span.ends_with(b"::") {
        span = &span[..span.len() - 1];
    }
    if !span.iter().any(|&b| class(b) & HEX != 0) {
        return None;
    }
    let text = std::str::from_utf8(span).ok()?;
    text.parse::<std::net::Ipv6Addr>().ok()?;
    Some(i + span.len())
}

// ---------------------------------------------------------------------------------------------
// IBAN

/// `CCdd` + 11–30 alphanumerics, compact or in groups of four separated by single spaces;
/// mod-97 must be 1. The longest valid group boundary wins.
fn iban(v: &[u8], i: usize) -> Option<usize> {
    let mut buf = [0u8; 34];
    let mut count = 0usize;
    let mut ends = [(0usize, 0usize); 34];
    let mut n_ends = 0;
    let mut k = i;
    loop {
        let group_start = count;
        while count < 34 && matches!(at(v, k), b'0'..=b'9' | b'A'..=b'Z') {
            buf[count] = v[k];
            count += 1;
            k += 1;
        }
        let glen = count - group_start;
        if is_alnum(at(v, k)) {
            // Lower-case or over-long run: only earlier boundaries can be valid.
            break;
        }
        ends[n_ends] = (count, k);
        n_ends += 1;
        // Printed form: groups of four separated by single spaces, the last one shorter.
        if at(v, k) == b' '
            && matches!(at(v, k + 1), b'0'..=b'9' | b'A'..=b'Z')
            && glen == 4
            && count < 34
        {
            k += 1;
            continue;
        }
        break;
    }
    ends[..n_ends].iter().rev().find_map(|&(count, end)| {
        ((15..=34).contains(&count) && iban_checksum(&buf[..count])).then_some(end)
    })
}

/// ISO 13616 mod-97 check over an upper-case compact IBAN.
pub(crate) fn iban_checksum(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    let mut r = 0u32;
    for &b in iban[4..].iter().chain(&iban[..4]) {
        r = match b {
            b'0'..=b'9' => (r * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (r * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        };
    }
    r == 1
}

// ---------------------------------------------------------------------------------------------
// cloud keys

/// `AKIA`/`ASIA`/... followed by 16 upper-case letters or digits.
fn aws_access_key(t: &[u8]) -> bool {
    const PREFIXES: [&[u8; 4]; 8] = [
        b"AKIA", b"ASIA", b"AGPA", b"AIDA", b"AROA", b"AIPA", b"ANPA", b"ANVA",
    ];
    PREFIXES.iter().any(|p| t.starts_with(*p))
        && t[4..]
            .iter()
            .all(|&b| matches!(b, b'A'..=b'Z' | b'2'..=b'7' | b'0' | b'1' | b'8' | b'9'))
}

/// AWS secret access keys: 40 base64 characters mixing upper, lower and digits.
fn aws_secret_key(t: &[u8]) -> bool {
    let (mut up, mut lo, mut dg) = (false, false, false);
    for &b in t {
        let c = class(b);
        up |= c & UPPER != 0;
        lo |= c & LOWER != 0;
        dg |= c & DIGIT != 0;
        if c & ALNUM == 0 && b != b'/' && b != b'+' {
            return false;
        }
    }
    up && lo && dg && entropy(t) >= 4.2
}

/// GitHub (`ghp_` `gho_` `ghu_` `ghs_` `ghr_`, `github_pat_`) and Slack (`xox?-`) tokens.
fn cloud_token(t: &[u8]) -> bool {
    if t.len() >= 40
        && t.starts_with(b"gh")
        && matches!(t[2], b'p' | b'o' | b'u' | b's' | b'r')
        && t[3] == b'_'
    {
        return t[4..].iter().all(|&b| is_alnum(b));
    }
    if t.len() >= 50 && t.starts_with(b"github_pat_") {
        return t[11..].iter().all(|&b| is_alnum(b) || b == b'_');
    }
    if t.len() >= 15
        && t.starts_with(b"xox")
        && matches!(t[3], b'a' | b'b' | b'p' | b'r' | b's' | b'e')
        && t[4] == b'-'
    {
        return t[5..].iter().all(|&b| is_alnum(b) || b == b'-');
    }
    false
}

/// Azure storage and service-bus keys: the base64 value after `AccountKey=`,
/// `SharedAccessKey=` or a SAS `sig=`.
fn azure_key(v: &[u8], i: usize, j: usize) -> Option<(usize, usize, Detector)> {
    let name = &v[i..j];
    if at(v, j) != b'=' || !matches!(name, b"AccountKey" | b"SharedAccessKey" | b"sig") {
        return None;
    }
    let s = j + 1;
    let mut e = s;
    while e < v.len() && (class(v[e]) & TOKEN != 0 || v[e] == b'=' || v[e] == b'%') {
        e += 1;
    }
    (e - s >= 40).then_some((s, e, Detector::CloudKey))
}

// ---------------------------------------------------------------------------------------------
// JWT and key blocks

fn is_b64url(b: u8) -> bool {
    is_alnum(b) || b == b'-' || b == b'_'
}

/// `header.payload.signature`, base64url, header decoding to a JSON object with `"alg"`.
fn jwt(v: &[u8], i: usize) -> Option<usize> {
    let n = v.len();
    let mut k = i;
    while k < n && is_b64url(v[k]) {
        k += 1;
    }
    let header = &v[i..k];
    if at(v, k) != b'.' || header.len() < 10 {
        return None;
    }
    k += 1;
    let p = k;
    while k < n && is_b64url(v[k]) {
        k += 1;
    }
    if k == p || at(v, k) != b'.' {
        return None;
    }
    k += 1;
    while k < n && is_b64url(v[k]) {
        k += 1;
    }
    if at(v, k) == b'.' {
        return None;
    }
    let mut buf = [0u8; 512];
    let decoded = b64url_decode(header, &mut buf)?;
    let text = decoded.trim_ascii_start();
    (text.first() == Some(&b'{') && memchr::memmem::find(text, b"\"alg\"").is_some()).then_some(k)
}

/// Decodes unpadded base64url into `buf`; `None` if invalid or too long.
fn b64url_decode<'a>(s: &[u8], buf: &'a mut [u8]) -> Option<&'a [u8]> {
    if s.len() / 4 * 3 + 3 > buf.len() || s.len() % 4 == 1 {
        return None;
    }
    let val = |b: u8| -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut o = 0;
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (k, &b) in chunk.iter().enumerate() {
            acc |= val(b)? << (18 - 6 * k);
        }
        let bytes = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        let take = chunk.len() - 1;
        buf[o..o + take].copy_from_slice(&bytes[..take]);
        o += take;
    }
    Some(&buf[..o])
}

/// `-----BEGIN ... PRIVATE KEY-----` through the matching END line. A block without an END
/// (a truncated value) is masked to the end of the value: refuse rather than leak.
fn private_key(v: &[u8], i: usize) -> Option<usize> {
    let label_start = i + 11;
    let label_len = memchr::memmem::find(&v[label_start..], b"-----")?;
    if label_len > 64
        || memchr::memmem::find(&v[label_start..label_start + label_len], b"PRIVATE KEY").is_none()
    {
        return None;
    }
    let body = label_start + label_len + 5;
    let Some(end_at) = memchr::memmem::find(&v[body..], b"-----END ") else {
        return Some(v.len());
    };
    let end_label = body + end_at + 9;
    match memchr::memmem::find(&v[end_label..], b"-----") {
        Some(x) => Some(end_label + x + 5),
        None => Some(v.len()),
    }
}

// ---------------------------------------------------------------------------------------------
// high entropy

/// Shortest token the generic detector considers.
pub(crate) const HIGH_ENTROPY_MIN_LEN: usize = 20;

/// Shannon entropy in bits per byte.
pub(crate) fn entropy(t: &[u8]) -> f64 {
    let mut counts = [0u16; 256];
    for &b in t {
        counts[b as usize] = counts[b as usize].saturating_add(1);
    }
    let n = t.len() as f64;
    let mut sum = 0.0;
    for &c in counts.iter().filter(|&&c| c > 0) {
        let c = f64::from(c);
        sum += c * c.log2();
    }
    n.log2() - sum / n
}

/// Random-looking tokens: mixed case with digits and near-maximal entropy, or long hex with
/// digits and letters. UUIDs are identifiers, not secrets, and are left alone.
fn high_entropy(t: &[u8]) -> bool {
    let t = match t.iter().position(|&b| is_alnum(b)) {
        Some(s) => &t[s..],
        None => return false,
    };
    if t.len() < HIGH_ENTROPY_MIN_LEN || is_uuid(t) {
        return false;
    }
    let (mut up, mut lo, mut dg, mut hex_lo, mut hex_up) = (0, 0, 0, true, true);
    for &b in t {
        let c = class(b);
        up += usize::from(c & UPPER != 0);
        lo += usize::from(c & LOWER != 0);
        dg += usize::from(c & DIGIT != 0);
        hex_lo &= matches!(b, b'0'..=b'9' | b'a'..=b'f');
        hex_up &= matches!(b, b'0'..=b'9' | b'A'..=b'F');
    }
    let h = entropy(t);
    if hex_lo || hex_up {
        return t.len() >= 32 && dg > 0 && up + lo > 0 && h >= 3.0;
    }
    let len = t.len() as f64;
    // Identifiers (`InvoiceNumber2024March15`) mix classes and score high entropy too, but are
    // made of words: runs of four or more lower-case letters cover a third or more of them,
    // against a few percent for random base62. Random base62 sits close to log2(len).
    let words = lowercase_word_bytes(t) as f64;
    let mixed =
        up >= 1 && lo >= 1 && dg >= 1 && h >= (len.log2() - 1.0).min(4.3) && words < 0.3 * len;
    // Long tokens with near-maximal entropy are keys whatever their letters look like.
    let long = t.len() >= 40 && dg >= 1 && up + lo >= 1 && h >= 4.6;
    mixed || long
}

/// Bytes in runs of at least four ASCII lower-case letters.
fn lowercase_word_bytes(t: &[u8]) -> usize {
    let (mut total, mut run) = (0, 0);
    for &b in t.iter().chain(std::iter::once(&0)) {
        if b.is_ascii_lowercase() {
            run += 1;
        } else {
            if run >= 4 {
                total += run;
            }
            run = 0;
        }
    }
    total
}

fn is_uuid(t: &[u8]) -> bool {
    t.len() == 36
        && t.iter().enumerate().all(|(k, &b)| {
            if matches!(k, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}
