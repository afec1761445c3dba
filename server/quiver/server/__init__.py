"""The Quiver server: gRPC servicers, core, storage, ingest, index and embedders."""
