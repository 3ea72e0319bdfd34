/**
 * A real HTTPS server on 127.0.0.1 for the `https://<handle>/.well-known/atproto-did`
 * lookup, with a self-signed certificate made at test time by `openssl` for the
 * handle names it serves, and a `fetch` to pass through the resolver's init that
 * sends every https request to it: a real TLS handshake, the certificate checked
 * against the handle's name (SNI), a real HTTP exchange. Plain-http URLs (the
 * hand-made PLC directory) go to the global fetch untouched.
 *
 * Only the TCP destination is redirected (a handle's name does not resolve to
 * 127.0.0.1, and the well-known lookup always uses port 443); everything above it
 * — status, headers, streamed body, timeouts and aborts through the signal — is
 * what the production code sees from fetch.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { createServer, request, type Server } from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { promisify } from 'node:util'
import type { FetchLike } from '../../src/http/fetch.ts'

const run = promisify(execFile)

export interface HttpsRequest {
  /** The `host` the client asked for (the handle). */
  host: string
  path: string
  /** Set once the client's connection for this request closed (e.g. it aborted). */
  closed: boolean
}

export type HttpsHandler = (req: IncomingMessage, res: ServerResponse, host: string) => void

export interface TestHttpsServer {
  port: number
  /** The certificate (PEM), the only trust anchor of {@link TestHttpsServer.fetch}. */
  ca: string
  requests: HttpsRequest[]
  /** Routes every https URL to this server; http URLs to the global fetch. */
  fetch: FetchLike
  close: () => Promise<void>
}

/** A self-signed certificate for `hostnames` (wildcards allowed), made with openssl. */
export async function makeCertificate (hostnames: string[]): Promise<{ key: string, cert: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'atmirror-cert-'))
  try {
    await run('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '2',
      '-subj', '/CN=atmirror-test', '-addext', `subjectAltName=${hostnames.map(name => `DNS:${name}`).join(',')}`
    ])
  } catch (err) {
    throw new Error(`openssl is needed to make the test HTTPS certificate: ${(err as Error).message}`, { cause: err })
  }
  try {
    return { key: await readFile(join(dir, 'key.pem'), 'utf8'), cert: await readFile(join(dir, 'cert.pem'), 'utf8') }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** Serves `handler` over TLS for `hostnames`; unknown paths are up to the handler. */
export async function startHttpsServer (hostnames: string[], handler: HttpsHandler): Promise<TestHttpsServer> {
  const { key, cert } = await makeCertificate(hostnames)
  const requests: HttpsRequest[] = []
  const server: Server = createServer({ key, cert }, (req, res) => {
    const host = (req.headers.host ?? '').replace(/:\d+$/, '')
    const entry: HttpsRequest = { host, path: req.url ?? '/', closed: false }
    requests.push(entry)
    res.on('close', () => { entry.closed = true })
    handler(req, res, host)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo

  const fetchVia: FetchLike = async (input, init = {}) => {
    const url = new URL(input.toString())
    if (url.protocol !== 'https:') return await fetch(input, init)
    const signal = init.signal ?? undefined
    signal?.throwIfAborted()
    return await new Promise<Response>((resolve, reject) => {
      const req = request({
        host: '127.0.0.1',
        port,
        servername: url.hostname,
        ca: cert,
        method: init.method ?? 'GET',
        path: url.pathname + url.search,
        headers: { ...headersObject(init.headers), host: url.host }
      })
      let response: IncomingMessage | undefined
      // An abort fails the body read as well, with the signal's reason (as fetch does).
      const onAbort = (): void => { (response ?? req).destroy(signal?.reason) }
      signal?.addEventListener('abort', onAbort, { once: true })
      req.on('error', err => {
        signal?.removeEventListener('abort', onAbort)
        // Like fetch: the caller's abort as it is, anything else a TypeError with a cause.
        reject(signal?.aborted === true ? signal.reason : new TypeError('fetch failed', { cause: err }))
      })
      req.on('response', res => {
        response = res
        res.on('close', () => { signal?.removeEventListener('abort', onAbort) })
        const headers = new Headers()
        for (let i = 0; i < res.rawHeaders.length; i += 2) headers.append(res.rawHeaders[i] as string, res.rawHeaders[i + 1] as string)
        const status = res.statusCode ?? 500
        const body = status === 204 || status === 304 ? null : Readable.toWeb(res) as ReadableStream<Uint8Array>
        resolve(new Response(body, { status, statusText: res.statusMessage, headers }))
      })
      req.end()
    })
  }

  return {
    port,
    ca: cert,
    requests,
    fetch: fetchVia,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => { resolve() }))
    }
  }
}

function headersObject (headers: HeadersInit | undefined): Record<string, string> {
  const out: Record<string, string> = {}
  new Headers(headers ?? {}).forEach((value, name) => { out[name] = value })
  return out
}
