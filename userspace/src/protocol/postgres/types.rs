//! PostgreSQL types as the masking engine sees them: each type OID mapped onto a
//! protocol-neutral [`ValueKind`].

use crate::mask::ValueKind;

/// PostgreSQL type OIDs masking treats specially.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const CIDR: u32 = 650;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const INET: u32 = 869;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// What values of a type are, for masking.
pub fn value_kind(type_oid: u32) -> ValueKind {
    match type_oid {
        // Binary representation is the raw text bytes.
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN | oid::XML => {
            ValueKind::Text
        }
        oid::JSON => ValueKind::Json { binary_prefix: 0 },
        // Binary jsonb is a version byte, then the text.
        oid::JSONB => ValueKind::Json { binary_prefix: 1 },
        oid::BYTEA => ValueKind::Bytes,
        // Text output of these types cannot hold anything a detector looks for (fixed formats,
        // at most ten digits), so scanning them would only cost time.
        oid::BOOL
        | oid::INT2
        | oid::INT4
        | oid::OID
        | oid::FLOAT4
        | oid::FLOAT8
        | oid::DATE
        | oid::TIME
        | oid::TIMETZ
        | oid::TIMESTAMP
        | oid::TIMESTAMPTZ
        | oid::INTERVAL
        | oid::UUID => ValueKind::Plain,
        oid::INET | oid::CIDR => ValueKind::Address,
        _ => ValueKind::Other,
    }
}
