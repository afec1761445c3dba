// A Go client built from the protos alone: uploads three files, creates a store, runs the
// seed's batch (with attributes), watches it live and searches. Prints one JSON summary line.
//
//	QUIVER_TARGET=localhost:50051 QUIVER_API_KEY=... go run .
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	quiverv1 "quiver/gen/go/quiver/v1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "quiver go example failed:", err)
		os.Exit(1)
	}
}

func run() error {
	target := os.Getenv("QUIVER_TARGET")
	if target == "" {
		target = "localhost:50051"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if key := os.Getenv("QUIVER_API_KEY"); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	conn, err := grpc.Dial(target, grpc.WithInsecure()) //nolint:staticcheck // plaintext example
	if err != nil {
		return err
	}
	defer conn.Close()
	files := quiverv1.NewFileServiceClient(conn)
	stores := quiverv1.NewVectorStoreServiceClient(conn)
	batches := quiverv1.NewFileBatchServiceClient(conn)

	docs := [][2]string{
		{"otters.md", "# Otters\nSea otters hold hands while they sleep so they do not drift apart."},
		{"owls.txt", "Owls turn their heads up to 270 degrees and hunt silently at night."},
		{"octopus.txt", "An octopus has three hearts and blue blood; it tastes with its arms."},
	}
	var fileIDs []string
	for _, doc := range docs {
		stream, err := files.UploadFile(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(&quiverv1.UploadFileRequest{Filename: doc[0], Data: []byte(doc[1])}); err != nil {
			return err
		}
		reply, err := stream.CloseAndRecv()
		if err != nil {
			return fmt.Errorf("upload %s: %w", doc[0], err)
		}
		fileIDs = append(fileIDs, reply.GetFile().GetId())
	}

	created, err := stores.CreateVectorStore(ctx, &quiverv1.CreateVectorStoreRequest{Name: "go-example"})
	if err != nil {
		return err
	}
	store := created.GetVectorStore()
	batch, err := batches.CreateFileBatch(ctx, &quiverv1.CreateFileBatchRequest{
		VectorStoreId: store.GetId(),
		FileIds:       fileIDs,
		Attributes:    map[string]*structpb.Value{"batch_id": structpb.NewStringValue("import-2024-01")},
	})
	if err != nil {
		return err
	}

	watch, err := batches.WatchFileBatch(ctx, &quiverv1.WatchFileBatchRequest{
		VectorStoreId: store.GetId(),
		BatchId:       batch.GetFileBatch().GetId(),
	})
	if err != nil {
		return err
	}
	var last *quiverv1.WatchFileBatchResponse
	for {
		update, err := watch.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		counts := update.GetFileBatch().GetFileCounts()
		fmt.Printf("#%d %s: %d/%d completed\n", update.GetSequence(),
			update.GetFileBatch().GetStatus(), counts.GetCompleted(), counts.GetTotal())
		last = update
	}
	if last == nil {
		return fmt.Errorf("the watch ended without a message")
	}

	results, err := stores.SearchVectorStore(ctx, &quiverv1.SearchVectorStoreRequest{
		VectorStoreId: store.GetId(),
		Query:         []string{"which animal has three hearts?"},
		MaxNumResults: 3,
		Filters: &quiverv1.Filter{
			Type: "eq", Key: "batch_id", Value: structpb.NewStringValue("import-2024-01"),
		},
	})
	if err != nil {
		return err
	}
	top := ""
	for i, hit := range results.GetData() {
		fmt.Printf("%.3f %s\n", hit.GetScore(), hit.GetFilename())
		if i == 0 {
			top = hit.GetFilename()
		}
	}
	summary, _ := json.Marshal(map[string]interface{}{
		"vector_store_id": store.GetId(),
		"batch_status":    last.GetFileBatch().GetStatus().String(),
		"completed":       last.GetFileBatch().GetFileCounts().GetCompleted(),
		"top_result":      top,
	})
	fmt.Println(string(summary))
	return nil
}
