//! Carrying out what the policy decided: the promotion sequence, hook commands, the fence,
//! elections and leases.

pub mod fence;
pub mod follow;
pub mod leadership;
pub mod member;
pub mod process;
pub mod promote;
