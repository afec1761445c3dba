// Upload files, run a batch with attributes, watch it live, then search: proof that a
// client generated from the protos alone works. Prints one JSON summary line at the end.
//   QUIVER_TARGET=localhost:50051 node example.js
"use strict";

const { QuiverClient, errorDetails } = require("./quiver");

async function main() {
  const client = new QuiverClient();
  try {
    const docs = {
      "otters.md": "# Otters\nSea otters hold hands while they sleep so they do not drift apart.",
      "owls.txt": "Owls turn their heads up to 270 degrees and hunt silently at night.",
      "octopus.txt": "An octopus has three hearts and blue blood; it tastes with its arms.",
    };
    const fileIds = [];
    for (const [name, text] of Object.entries(docs)) {
      fileIds.push((await client.upload(name, Buffer.from(text))).id);
    }
    const { vector_store: store } = await client.unary(client.stores, "CreateVectorStore", {
      name: "node-example",
    });
    const { file_batch: batch } = await client.unary(client.batches, "CreateFileBatch", {
      vector_store_id: store.id,
      file_ids: fileIds,
      attributes: { batch_id: { stringValue: "import-2024-01" } },
    });
    let last;
    for await (const update of client.watch(store.id, batch.id)) {
      const c = update.file_batch.file_counts;
      console.log(`#${update.sequence} ${update.file_batch.status}: ${c.completed}/${c.total} completed`);
      last = update;
    }
    const results = await client.unary(client.stores, "SearchVectorStore", {
      vector_store_id: store.id,
      query: ["which animal has three hearts?"],
      max_num_results: 3,
      filters: { type: "eq", key: "batch_id", value: { stringValue: "import-2024-01" } },
    });
    for (const hit of results.data) console.log(`${hit.score.toFixed(3)} ${hit.filename}`);
    // A bad field answers INVALID_ARGUMENT with a google.rpc.BadRequest naming it.
    let violations = [];
    try {
      await client.unary(client.stores, "CreateVectorStore", { name: "x", metadata: { k: "v".repeat(513) } });
    } catch (error) {
      violations = errorDetails(error).badRequest;
      for (const v of violations) console.log(`invalid ${v.field}: ${v.description}`);
    }
    console.log(
      JSON.stringify({
        vector_store_id: store.id,
        batch_status: last.file_batch.status,
        completed: last.file_batch.file_counts.completed,
        top_result: results.data.length ? results.data[0].filename : null,
        bad_request_fields: violations.map((v) => v.field),
      }),
    );
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(`quiver example failed: ${error.message}`);
  process.exit(1);
});
