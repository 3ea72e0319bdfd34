/**
 * node:http, loaded through `require`. An ES `import … from 'node:http'` builds the
 * module's namespace, which reads every export, and one of them is a lazy getter
 * that loads undici (the fetch implementation): ~40 ms of CPU on every start of a
 * command that never fetches (`atmirror status`, `atmirror block get`). Through
 * `require` only what is used gets loaded. Also the listen and close steps both
 * servers (control-api.ts, public-server.ts) share.
 */
import { createRequire } from 'node:module'
import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { ListenError } from '../errors.ts'

export const nodeHttp: typeof import('node:http') = createRequire(import.meta.url)('node:http')

/**
 * Listens on `host:port` (port 0: any free one) and returns the server's
 * `http://host:port`. A failure is a ListenError naming `host:port (what)`.
 */
export async function listenHttp (server: Server, options: { host: string, port: number, backlog?: number, what: string }): Promise<string> {
  const { host, port, backlog, what } = options
  await new Promise<void>((resolve, reject) => {
    const fail = (err: NodeJS.ErrnoException): void => {
      const reason = err.code === 'EADDRINUSE' ? 'address already in use' : err.code === 'EADDRNOTAVAIL' ? 'address not available on this machine' : err.message
      reject(new ListenError(reason, { address: `${host}:${port} (${what})`, code: err.code }, { cause: err }))
    }
    server.once('error', fail)
    server.listen({ port, host, backlog }, () => {
      server.off('error', fail)
      resolve()
    })
  })
  const bound = (server.address() as AddressInfo).port
  return `http://${host.includes(':') ? `[${host}]` : host}:${bound}`
}

/**
 * Closes the server: idle connections at once, those still busy after `graceMs`
 * (a request still running gets that long to answer).
 */
export async function closeHttp (server: Server, graceMs: number): Promise<void> {
  const closed = new Promise<void>(resolve => { server.close(() => { resolve() }) })
  server.closeIdleConnections()
  const cut = setTimeout(() => { server.closeAllConnections() }, graceMs)
  cut.unref()
  try {
    await closed
  } finally {
    clearTimeout(cut)
  }
}
