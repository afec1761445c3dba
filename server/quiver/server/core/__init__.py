"""The service's logic, free of protobuf: files, stores, batches, scheduling, watching."""
