//! `wren-cni`: CNI spec types (requests, results in every supported version, errors) shared by
//! the `wren-cni` plugin binary and the agent that serves it.
