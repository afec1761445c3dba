// A small Quiver client for Node.js, loaded at run time from the .proto files alone.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");
const FILES = ["files.proto", "vector_stores.proto", "file_batches.proto"].map((f) =>
  path.join("quiver", "v1", f),
);

function loadQuiver() {
  const definition = protoLoader.loadSync(FILES, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // snake_case field names, as in OpenAI's JSON
    longs: Number, // int64 counters and timestamps as numbers
    enums: String, // statuses as their names
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).quiver.v1;
}

let rpcTypes;
function googleRpc() {
  // google/rpc/status.proto and error_details.proto, vendored under protos/google/rpc.
  if (!rpcTypes) {
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) =>
      target.startsWith("google/protobuf/") ? target : path.join(PROTO_ROOT, target);
    root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
    rpcTypes = root;
  }
  return rpcTypes;
}

/**
 * The google.rpc.Status details of a failed call (the grpc-status-details-bin trailer):
 * { badRequest: [{field, description}], errorInfo: {reason, domain, metadata} | null,
 *   resources: [{resource_type, resource_name}] }. Empty when the server sent none.
 */
function errorDetails(error) {
  const out = { badRequest: [], errorInfo: null, resources: [] };
  const raw = error && error.metadata && error.metadata.get("grpc-status-details-bin")[0];
  if (!raw) return out;
  const root = googleRpc();
  const status = root.lookupType("google.rpc.Status").decode(raw);
  const types = {
    "type.googleapis.com/google.rpc.BadRequest": "google.rpc.BadRequest",
    "type.googleapis.com/google.rpc.ErrorInfo": "google.rpc.ErrorInfo",
    "type.googleapis.com/google.rpc.ResourceInfo": "google.rpc.ResourceInfo",
  };
  for (const any of status.details) {
    const name = types[any.type_url];
    if (!name) continue;
    const type = root.lookupType(name);
    const detail = type.toObject(type.decode(any.value), { defaults: true });
    if (name === "google.rpc.BadRequest") out.badRequest.push(...detail.field_violations);
    else if (name === "google.rpc.ErrorInfo") out.errorInfo = detail;
    else out.resources.push(detail);
  }
  return out;
}

/** Promisified unary calls, a readable upload and an async-iterable watch. */
class QuiverClient {
  constructor({ target = process.env.QUIVER_TARGET || "localhost:50051", apiKey = process.env.QUIVER_API_KEY } = {}) {
    const v1 = loadQuiver();
    const credentials = grpc.credentials.createInsecure();
    this.files = new v1.FileService(target, credentials);
    this.stores = new v1.VectorStoreService(target, credentials);
    this.batches = new v1.FileBatchService(target, credentials);
    this.metadata = new grpc.Metadata();
    if (apiKey) this.metadata.set("authorization", `Bearer ${apiKey}`);
  }

  unary(service, method, request) {
    return new Promise((resolve, reject) => {
      service[method](request, this.metadata, (error, reply) => (error ? reject(error) : resolve(reply)));
    });
  }

  upload(filename, data, purpose = "assistants") {
    return new Promise((resolve, reject) => {
      const call = this.files.UploadFile(this.metadata, (error, reply) =>
        error ? reject(error) : resolve(reply.file),
      );
      const piece = 1 << 20;
      call.write({ filename, purpose, data: data.subarray(0, piece) });
      for (let start = piece; start < data.length; start += piece) {
        call.write({ data: data.subarray(start, start + piece) });
      }
      call.end();
    });
  }

  /** Yields every WatchFileBatch message until the batch ends. */
  async *watch(vector_store_id, batch_id, after_sequence = 0) {
    const stream = this.batches.WatchFileBatch({ vector_store_id, batch_id, after_sequence }, this.metadata);
    for await (const message of stream) yield message;
  }

  close() {
    for (const client of [this.files, this.stores, this.batches]) client.close();
  }
}

module.exports = { QuiverClient, loadQuiver, errorDetails };
