// Binding a listener (public, mqtts, admin): one place that turns a bind failure into a
// ListenError naming the listener, the address and what to do about it.
import type { AddressInfo, Server } from 'node:net'
import { ListenError } from './errors.js'

/** Which listener is binding, as the error message names it. */
export type ListenerName = 'public' | 'mqtts' | 'admin'

export function listen(
  server: Server,
  name: ListenerName,
  host: string,
  port: number,
): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      const hint = err.code === 'EACCES' ? ' (ports below 1024 need CAP_NET_BIND_SERVICE)' : ''
      const what = name === 'public' ? 'cannot listen' : `${name} listener cannot listen`
      reject(new ListenError(`${what} on ${host}:${port}: ${err.code}${hint}`, { cause: err }))
    }
    server.once('error', onError)
    server.listen(port, host, () => {
      server.removeListener('error', onError)
      resolve(server.address() as AddressInfo)
    })
  })
}
