// The client half of a connection, whatever carries it: a WebSocket (ws:// and wss://) or a bare
// TLS byte stream (mqtts). The Connection sees only this interface, so one lifecycle (the
// backpressure, the close summary, the half-open broker timer, the log lines, the metrics)
// serves every listener.
import type { CloseCodeValue } from './close-codes.js'

/** What a client side reports to its connection. */
export interface ClientEvents {
  /** Bytes from the client, in order (one WebSocket binary frame, or one socket read). */
  clientData(chunk: Buffer): void
  clientPong(): void
  /**
   * The client side is closing for a reason of the gateway's (a text frame, a frame over
   * ws.maxPayload, a protocol error): the summary the close will be logged with.
   */
  clientFault(code: CloseCodeValue, reason: string): void
  /** The client side is closed; `code` is undefined where the transport has no close codes. */
  clientClosed(code: number | undefined, reason: string): void
}

export interface ClientSide {
  /** True for WebSocket: data arrives in frames and closes carry a code. */
  readonly framed: boolean
  /** Bytes handed to send() that have not been written to the socket yet. */
  readonly bufferedAmount: number
  /** Starts delivering events; called once, by the Connection's constructor. */
  bind(events: ClientEvents): void
  /** Queues `chunk`; `onWritten` is called once it has been written to the socket. */
  send(chunk: Buffer, onWritten?: (err?: Error | null) => void): void
  /** Stops reading from the client (backpressure toward a full broker socket). */
  pause(): void
  resume(): void
  /** Begins an orderly close (a close frame with `code`, or TLS close_notify and FIN). */
  close(code: CloseCodeValue, reason: string): void
  /** Cuts the connection at once. */
  terminate(): void
  /** Sends a ping and returns true, or returns false where there is none (or it is not open). */
  ping(): boolean
}
