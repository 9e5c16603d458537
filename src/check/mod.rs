//! Looking at other servers without ever blocking: the primary's check, a primary's rounds over
//! its members, and the witnesses' answers.

pub mod members;
pub mod probe;
pub mod resolve;
pub mod witness;
