//! Typed JSON access on top of any [`Store`](crate::Store).
