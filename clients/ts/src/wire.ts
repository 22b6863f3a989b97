// Framing (docs/protocol.md "Frames"): binary frames carry one or more
// varint length-delimited Envelopes, text frames one Envelope in proto3 JSON.
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { fromBinary, fromJsonString, toJsonString, create, type MessageInitShape } from "@bufbuild/protobuf";
import { sizeDelimitedEncode } from "@bufbuild/protobuf/wire";
import { EnvelopeSchema, type Envelope } from "./gen/im/v1/client_pb.js";

/** The subprotocol a connection speaks. */
export type Wire = "proto" | "json";

export function subprotocol(wire: Wire): string {
  return wire === "proto" ? "im.v1.proto" : "im.v1.json";
}

/** One frame holding `payload`, in the connection's form. */
export function encodeFrame(
  wire: Wire,
  payload: MessageInitShape<typeof EnvelopeSchema>["payload"],
): string | Uint8Array {
  const env = create(EnvelopeSchema, { payload });
  return wire === "proto" ? sizeDelimitedEncode(EnvelopeSchema, env) : toJsonString(EnvelopeSchema, env);
}

/** Every Envelope of a received frame, in order. */
export function decodeFrame(data: string | ArrayBuffer | Uint8Array): Envelope[] {
  if (typeof data === "string") {
    return [fromJsonString(EnvelopeSchema, data, { ignoreUnknownFields: true })];
  }
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  const reader = new BinaryReader(bytes);
  const out: Envelope[] = [];
  while (reader.pos < reader.len) {
    out.push(fromBinary(EnvelopeSchema, reader.bytes()));
  }
  return out;
}
