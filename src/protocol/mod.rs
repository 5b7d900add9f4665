//! The header protocol between the proxy and the app: the reserved names, the wire encoding of
//! session data and instructions, and the precedence rules. Pure: no IO, no store.

pub mod codec;
pub mod headers;
pub mod instructions;

pub use codec::{decode_session, encode_session};
pub use headers::{InvalidPrefix, ProtocolHeaders};
pub use instructions::{
    InstructionError, Instructions, RawInstructions, Revoke, parse_instructions,
};
