//! Carrying out what the policy decided: the promotion sequence, hook commands, the fence.

pub mod fence;
pub mod member;
pub mod process;
pub mod promote;
