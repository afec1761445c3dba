"""The gRPC edge: interceptor, servicers and protobuf conversion. Only this package imports pb2."""
