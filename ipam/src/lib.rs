//! `wren-ipam`: pools, blocks, block affinity, handles, allocation, borrowing and leak checks,
//! as pure logic over a [`wren_store::Store`].
