// The pino root logger. Only cli.ts creates one; everything else receives a Logger (or a child
// of it) as a parameter, so tests can pass a logger that writes into an array.
import { pino, type DestinationStream, type Logger } from 'pino'

export type { Logger }

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: 'drawbridge' },
    // Config dumps and errors may carry secrets (TLS passphrase, admin token).
    redact: ['*.passphrase', '*.token', 'config.tls.passphrase', 'config.admin.token'],
  }
  return destination === undefined ? pino(options) : pino(options, destination)
}
