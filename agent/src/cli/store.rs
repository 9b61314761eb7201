//! Opening the datastore from the command line's `--etcd-*` flags.
