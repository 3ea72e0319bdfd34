/**
 * The public HTTP server (`atmirror daemon --http HOST:PORT`): what the mirror holds,
 * read-only and without a token, for atproto clients, relays and IPFS gateways. It is
 * a separate server from the control API (control-api.ts), which drives the node and
 * needs the token; nothing here changes the node.
 *
 * XRPC is served by `@atproto/xrpc-server` (express) with the `com.atproto.*`
 * lexicons of `@atproto/api`: parameters are checked against the lexicons and
 * errors leave in XRPC form (`{ error, message }`). Both packages are loaded only
 * when a node serves HTTP, so the CLI's quick verbs stay quick.
 *
 * Other modules add to it, before or after `start()`:
 * - {@link PublicServer.mountXrpc}: a function that registers XRPC methods on the
 *   `@atproto/xrpc-server` Server (`server.method(nsid, handler)`,
 *   `server.streamMethod(nsid, handler)` for subscriptions);
 * - {@link PublicServer.mount}: a plain GET route on a path prefix (`/metrics`, the
 *   PLC read API, `/ipfs`), handled with node's request and response;
 * - {@link PublicServer.observe}: a hook that sees every request before the gate
 *   (metrics count them by {@link PublicServer.endpointOf} once answered).
 *
 * Every request passes one gate first:
 * - only GET and HEAD (405 otherwise), and no request body (413);
 * - request heads are bounded by node (16 KiB: a longer URL gets 431), as is the time
 *   to send them (`headersTimeout`);
 * - at most `maxPerClient` requests at once from one client address (429 beyond) and
 *   `maxRequests` overall (503 beyond), so one client cannot hold every slot;
 * - a connection that neither sends nor reads for `idleTimeoutMs` is closed, so a
 *   client that stops reading a long answer frees its slot.
 *
 * Behind a reverse proxy every request comes from the proxy's address; with
 * `trustProxy` the client address is the last one in `X-Forwarded-For` (the one the
 * proxy appended) instead. docs/OPERATIONS.md has an example.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { logger } from '@libp2p/logger'
import type { Server as XrpcServer } from '@atproto/xrpc-server'
import { ListenError } from '../errors.ts'
import { closeHttp, listenHttp, nodeHttp } from './node-http.ts'

const log = logger('atmirror:http')

/** The port the daemon's `--http` uses when given a host only. */
export const DEFAULT_HTTP_PORT = 2584

/** Connections the kernel queues before the server accepts them (capped by net.core.somaxconn). */
const LISTEN_BACKLOG = 4096

/** A plain GET route on a path prefix. */
export interface PublicRoute {
  /**
   * The path it answers: the path itself and everything under `path + '/'`
   * (`/metrics`, `/ipfs`). The longest matching prefix wins.
   */
  path: string
  /**
   * Which paths it answers instead of the prefix rule, for paths that are not one
   * prefix (the PLC read API's `/{did}…`); `path` then only names the route.
   */
  match?: (pathname: string) => boolean
  /** Answers the request (GET or HEAD). A throw answers 500 unless headers went out. */
  handler: (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>
}

/** Registers XRPC methods on the server. */
export type XrpcMount = (server: XrpcServer) => void

export interface PublicServerInit {
  /**
   * Interface to bind. Anything but loopback publishes what the mirror serves
   * (read-only) to whoever can reach the port.
   *
   * @default '127.0.0.1'
   */
  host?: string
  /**
   * TCP port; 0 picks a free one (read `url` after `start()`).
   *
   * @default 2584
   */
  port?: number
  /**
   * Requests one client address may have in flight; more answer 429.
   *
   * @default 16
   */
  maxPerClient?: number
  /**
   * Requests in flight overall; more answer 503.
   *
   * @default 512
   */
  maxRequests?: number
  /**
   * Milliseconds a connection may neither send nor read before it is closed.
   *
   * @default 60000
   */
  idleTimeoutMs?: number
  /**
   * Take the client address from `X-Forwarded-For` (last entry): only behind a
   * reverse proxy that sets it.
   *
   * @default false
   */
  trustProxy?: boolean
  /** Answered by `/xrpc/_health` as `{ version }`. */
  version?: string
}

/** The public read-only HTTP server. */
export class PublicServer {
  readonly #host: string
  readonly #port: number
  readonly #maxPerClient: number
  readonly #maxRequests: number
  readonly #idleTimeoutMs: number
  readonly #trustProxy: boolean
  readonly #version: string
  readonly #routes: PublicRoute[] = []
  readonly #xrpcMounts: XrpcMount[] = []
  readonly #observers: Array<(req: IncomingMessage, res: ServerResponse) => void> = []
  readonly #perClient = new Map<string, number>()
  #inFlight = 0
  #server: Server | undefined
  #xrpc: XrpcServer | undefined
  #url: string | undefined

  constructor (init: PublicServerInit = {}) {
    this.#host = init.host ?? '127.0.0.1'
    this.#port = init.port ?? DEFAULT_HTTP_PORT
    this.#maxPerClient = init.maxPerClient ?? 16
    this.#maxRequests = init.maxRequests ?? 512
    this.#idleTimeoutMs = init.idleTimeoutMs ?? 60_000
    this.#trustProxy = init.trustProxy ?? false
    this.#version = init.version ?? '0.0.0'
    this.mount({
      path: '/xrpc/_health',
      handler: (_req, res) => { sendJson(res, 200, { version: this.#version }) }
    })
  }

  /** `http://host:port` once started. */
  get url (): string {
    if (this.#url === undefined) throw new ListenError('not started', { address: `${this.#host}:${this.#port} (http)` })
    return this.#url
  }

  /** The address and port the server is bound to, once started. */
  get address (): AddressInfo {
    const address = this.#server?.address()
    if (address === undefined || address === null || typeof address === 'string') throw new ListenError('not started', { address: `${this.#host}:${this.#port} (http)` })
    return address
  }

  /** WebSocket subscribers connected now (subscribeRepos and any other subscription). */
  get subscribers (): number {
    let n = 0
    for (const sub of this.#xrpc?.subscriptions.values() ?? []) n += sub.wss.clients.size
    return n
  }

  /** Requests in flight now (all clients). */
  get inFlight (): number {
    return this.#inFlight
  }

  /** Adds a GET route on a path prefix (see {@link PublicRoute}). */
  mount (route: PublicRoute): void {
    if (route.match === undefined && (!route.path.startsWith('/') || route.path.endsWith('/'))) throw new TypeError(`route path must start and not end with '/': ${route.path}`)
    this.#routes.push(route)
    this.#routes.sort((a, b) => b.path.length - a.path.length)
  }

  /** Adds XRPC methods: `register` runs on the XRPC server at start (at once when started). */
  mountXrpc (register: XrpcMount): void {
    this.#xrpcMounts.push(register)
    if (this.#xrpc !== undefined) register(this.#xrpc)
  }

  /** Calls `hook` first for every request (WebSocket upgrades aside), before the gate answers it. */
  observe (hook: (req: IncomingMessage, res: ServerResponse) => void): void {
    this.#observers.push(hook)
  }

  /**
   * What a request asks for, from a bounded set of names (for labels): the mounted
   * route's path, the NSID of an XRPC method the lexicons know, or `other`.
   */
  endpointOf (req: IncomingMessage): string {
    let path: string
    try {
      path = new URL(req.url ?? '/', 'http://localhost').pathname
    } catch {
      return 'other'
    }
    const route = this.#routes.find(r => routeMatches(r, path))
    if (route !== undefined) return route.path
    const nsid = /^\/xrpc\/([a-zA-Z0-9.-]+)$/.exec(path)?.[1]
    return nsid !== undefined && this.#xrpc?.lex.getDef(nsid) !== undefined ? nsid : 'other'
  }

  async start (): Promise<void> {
    if (this.#server !== undefined) return
    const xrpc = await createXrpcServer()
    for (const register of this.#xrpcMounts) register(xrpc)
    this.#xrpc = xrpc
    const server = nodeHttp.createServer((req, res) => { this.#handle(req, res) })
    server.headersTimeout = 20_000
    server.requestTimeout = 30_000
    // idle in both directions: a client that stops reading a long answer is dropped
    server.timeout = this.#idleTimeoutMs
    server.keepAliveTimeout = 5_000
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => { this.#upgrade(req, socket, head) })
    // a burst of clients connecting at once waits in the kernel's queue rather than being reset
    this.#url = await listenHttp(server, { host: this.#host, port: this.#port, backlog: LISTEN_BACKLOG, what: 'http' })
    this.#server = server
    log('public HTTP server on %s', this.#url)
  }

  async stop (): Promise<void> {
    const server = this.#server
    if (server === undefined) return
    this.#server = undefined
    this.#url = undefined
    for (const sub of this.#xrpc?.subscriptions.values() ?? []) {
      for (const client of sub.wss.clients) client.terminate()
    }
    // streams still running (a getRepo) end with the node
    await closeHttp(server, 500)
    log('public HTTP server closed')
  }

  /** The address a request is counted against. */
  #client (req: IncomingMessage): string {
    if (this.#trustProxy) {
      const header = req.headers['x-forwarded-for']
      const value = Array.isArray(header) ? header[header.length - 1] : header
      const last = value?.split(',').pop()?.trim()
      if (last !== undefined && last !== '') return last
    }
    return req.socket.remoteAddress ?? 'unknown'
  }

  #handle (req: IncomingMessage, res: ServerResponse): void {
    for (const hook of this.#observers) hook(req, res)
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD')
      sendError(res, 405, 'MethodNotAllowed', `this server is read-only; ${String(req.method)} is not allowed`)
      return
    }
    const length = req.headers['content-length']
    if ((length !== undefined && length !== '0') || req.headers['transfer-encoding'] !== undefined) {
      res.setHeader('connection', 'close')
      sendError(res, 413, 'PayloadTooLarge', 'requests to this server carry no body')
      return
    }
    const client = this.#client(req)
    const mine = this.#perClient.get(client) ?? 0
    if (mine >= this.#maxPerClient) {
      res.setHeader('retry-after', '1')
      sendError(res, 429, 'RateLimitExceeded', `too many requests at once from one client (at most ${this.#maxPerClient})`)
      return
    }
    if (this.#inFlight >= this.#maxRequests) {
      res.setHeader('retry-after', '1')
      sendError(res, 503, 'ServiceUnavailable', 'too many requests at once; try again shortly')
      return
    }
    this.#inFlight++
    this.#perClient.set(client, mine + 1)
    res.once('close', () => {
      this.#inFlight--
      const left = (this.#perClient.get(client) ?? 1) - 1
      if (left <= 0) this.#perClient.delete(client)
      else this.#perClient.set(client, left)
    })
    let url: URL
    try {
      url = new URL(req.url ?? '/', 'http://localhost')
    } catch {
      sendError(res, 400, 'InvalidRequest', 'malformed request target')
      return
    }
    const route = this.#routes.find(r => routeMatches(r, url.pathname))
    if (route !== undefined) {
      Promise.resolve().then(async () => { await route.handler(req, res, url) }).catch((err: Error) => {
        log.error('%s %s failed - %e', req.method, req.url, err)
        if (!res.headersSent) sendError(res, 500, 'InternalServerError', 'internal error')
        else res.destroy()
      })
      return
    }
    if (url.pathname.startsWith('/xrpc/') && this.#xrpc !== undefined) {
      this.#xrpc.router(req, res)
      return
    }
    sendError(res, 404, 'NotFound', `no such route: ${url.pathname}`)
  }

  /** WebSocket upgrades go to the XRPC subscription of the path, if any. */
  #upgrade (req: IncomingMessage, socket: Socket, head: Buffer): void {
    const nsid = /^\/xrpc\/([^?]+)/.exec(req.url ?? '')?.[1]
    const sub = nsid === undefined ? undefined : this.#xrpc?.subscriptions.get(nsid)
    if (sub === undefined) {
      socket.end('HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n')
      return
    }
    // subscribers hold a connection each for as long as they like: bounded like requests
    if (this.subscribers >= this.#maxRequests) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 10\r\ncontent-length: 0\r\n\r\n')
      return
    }
    sub.wss.handleUpgrade(req, socket, head, (ws) => sub.wss.emit('connection', ws, req))
  }
}

/** The XRPC server with the `com.atproto.*` lexicons (loaded on first use). */
async function createXrpcServer (): Promise<XrpcServer> {
  const [{ createServer, MethodNotImplementedError }, { schemas }] = await Promise.all([import('@atproto/xrpc-server'), import('@atproto/api')])
  return createServer(schemas.filter(doc => doc.id.startsWith('com.atproto.')), {
    // a method no module registered, known to the lexicons or not: what a PDS answers
    catchall: (_req, _res, next) => { next(new MethodNotImplementedError()) },
    // outputs are built from verified blocks by this code; checking each answer again costs time
    validateResponse: false,
    payload: { jsonLimit: 0, blobLimit: 0, textLimit: 0 }
  })
}

function routeMatches (route: PublicRoute, pathname: string): boolean {
  return route.match !== undefined ? route.match(pathname) : pathname === route.path || pathname.startsWith(route.path + '/')
}

/** A JSON answer (`type`: a JSON media type of its own, such as `application/did+ld+json`). */
export function sendJson (res: ServerResponse, status: number, body: unknown, type = 'application/json'): void {
  const bytes = Buffer.from(JSON.stringify(body))
  res.writeHead(status, { 'content-type': `${type}; charset=utf-8`, 'content-length': bytes.length })
  res.end(bytes)
}

/** An error in XRPC form: `{ error, message }`. */
export function sendError (res: ServerResponse, status: number, error: string, message: string): void {
  sendJson(res, status, { error, message })
}
