/**
 * The daemon's control API: JSON over HTTP on 127.0.0.1, for the CLI and local tools.
 *
 * Every request needs `Authorization: Bearer <token>`, the token being the hex string
 * in `<dataDir>/api-token` (created on first start: 32 random bytes, mode 0600).
 * Whoever can read the data directory can drive the node; nobody else can, even
 * another local user who can reach the port. The server binds to loopback unless
 * `host` says otherwise.
 *
 * Routes (see docs/OPERATIONS.md for examples):
 *
 * | method | path                   | answer                                         |
 * | ------ | ---------------------- | ---------------------------------------------- |
 * | GET    | /v1/status             | NodeStatus                                     |
 * | GET    | /v1/pins               | { pins: PinnedRepo[] }                         |
 * | POST   | /v1/pins               | body { did } or { handle }: pins, mirrors once; PinResult |
 * | DELETE | /v1/pins/:did          | UnpinResult                                    |
 * | GET    | /v1/repos/:did         | PinnedRepo                                     |
 * | POST   | /v1/repos/:did/sync    | SyncResultJson                                 |
 * | GET    | /v1/peers              | PeersResult (connected peers)                  |
 * | GET    | /v1/mirrors/:did       | MirrorsResult (who announces the DID)          |
 *
 * Errors are `{ error: <error name>, message }` with 400 (bad input), 401 (token),
 * 404 (not pinned / not mirrored / unknown DID or route), 405, 413, 502 (the PDS or
 * the network failed), 503 (shutting down) or 500.
 */
import { randomBytes, createHash, timingSafeEqual } from 'node:crypto'
import { chmod, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { logger } from '@libp2p/logger'
import {
  BadRequestError, BlockFetchError, ControlApiError, DataDirLockedError, DidNotFoundError, HandleNotFoundError, HeadError,
  IdentityError, InvalidIdentifierError, MethodNotAllowedError, NotPinnedError, PayloadTooLargeError, PdsError,
  RepoNotMirroredError, RepoVerificationError, RouteNotFoundError
} from '../errors.ts'

const log = logger('atmirror:api')

/** The default control API port. */
export const DEFAULT_API_PORT = 5176

/** The longest request body the API reads. */
const MAX_BODY_BYTES = 16 * 1024

/** One pinned repo as the API reports it. */
export interface PinnedRepo {
  did: string
  handle?: string
  /** Rev of the stored commit; absent until the first sync completes. */
  rev?: string
  /** CID of the stored commit. */
  commit?: string
  /** MST root of the stored commit. */
  data?: string
  pds?: string
  /** The stored state's status, or `pending` before the first successful sync. */
  status: string
  /** ISO time the stored state last advanced or was confirmed current. */
  syncedAt?: string
  /** ISO time of the last sync attempt by this node, successful or not. */
  lastCheckAt?: string
  /** The last attempt's error, when it failed. */
  error?: string
  /** A sync of this repo is running now. */
  syncing: boolean
}

/** What GET /v1/status answers. */
export interface NodeStatus {
  /** `running` or `stopping`. */
  state: string
  pid: number
  version: string
  dataDir: string
  startedAt: string
  /** Seconds between re-checks of every pinned repo; 0 when only checked at start. */
  intervalSeconds: number
  /** Null when the node runs without the peer-to-peer network. */
  peerId: string | null
  /** `public`, `private`, or null without network. */
  network: string | null
  addresses: string[]
  /** Peers connected now. */
  peers: number
  repos: PinnedRepo[]
}

/** A sync result in JSON form (CIDs as strings). */
export interface SyncResultJson {
  did: string
  rev: string
  commit: string
  records: number
  changed: boolean
  full: boolean
  fetched: { local: number, bitswap: number, pds: number }
  bytes: number
  seconds: number
  /** The PDS offered an older signed rev than the stored one (kept); see SyncResult. */
  rollback?: { rev: string, commit: string }
  /** Damaged or missing blocks refetched when an unchanged repo's stored copy was checked. */
  repaired?: number
}

export interface PinResult {
  did: string
  handle?: string
  pinned: true
  sync: SyncResultJson
}

export interface UnpinResult {
  did: string
  pinned: false
}

/** GET /v1/peers: the peers the node holds connections to. */
export interface PeersResult {
  /** Null without the peer-to-peer network. */
  peerId: string | null
  peers: Array<{ peerId: string, addresses: string[], directions: string[] }>
}

/** GET /v1/mirrors/:did: the peers that announce the DID (DHT rendezvous key) or are configured. */
export interface MirrorsResult {
  did: string
  mirrors: Array<{ peerId: string, addresses: string[], source: string }>
}

/** What the control API drives; MirrorNode implements it. */
export interface ControlApiTarget {
  status: (options?: { signal?: AbortSignal }) => Promise<NodeStatus>
  listPins: (options?: { signal?: AbortSignal }) => Promise<PinnedRepo[]>
  pinAndSync: (didOrHandle: string, options?: { signal?: AbortSignal }) => Promise<PinResult>
  unpin: (didOrHandle: string, options?: { signal?: AbortSignal }) => Promise<UnpinResult>
  repoStatus: (did: string, options?: { signal?: AbortSignal }) => Promise<PinnedRepo>
  syncRepo: (did: string, options?: { signal?: AbortSignal }) => Promise<SyncResultJson>
  peers?: (options?: { signal?: AbortSignal }) => Promise<PeersResult>
  mirrors?: (did: string, options?: { signal?: AbortSignal }) => Promise<MirrorsResult>
}

export interface ControlApiComponents {
  target: ControlApiTarget
}

export interface ControlApiInit {
  /** The data directory; the token lives in `<dataDir>/api-token`. */
  dataDir: string
  /**
   * TCP port; 0 picks a free one (read `url` after `start()`).
   *
   * @default 5176
   */
  port?: number
  /**
   * Interface to bind. Anything but loopback exposes the API (token-protected, but
   * plain HTTP) to the network: only with a reason.
   *
   * @default '127.0.0.1'
   */
  host?: string
}

/** The token file of a data directory. */
export function apiTokenPath (dataDir: string): string {
  return join(dataDir, 'api-token')
}

/**
 * Shortest token taken from the file: 128 bits in hex. An empty file or a shorter
 * token (left by hand, or a truncated write) is replaced by a new one.
 */
const MIN_TOKEN_CHARS = 32

/** Reads the API token, creating it (32 random bytes, hex, mode 0600) on first use or when the file's is too short. */
export async function loadOrCreateApiToken (dataDir: string): Promise<string> {
  const path = apiTokenPath(dataDir)
  const existing = await readApiToken(dataDir)
  if (existing !== undefined && existing.length >= MIN_TOKEN_CHARS) {
    const info = await stat(path)
    if ((info.mode & 0o077) !== 0) {
      log.error('api token %s was readable by others; tightening to 0600', path)
      await chmod(path, 0o600)
    }
    return existing
  }
  const token = randomBytes(32).toString('hex')
  try {
    await writeFile(path, token + '\n', { mode: 0o600, flag: 'wx' })
    return token
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  }
  // The file exists: written by a concurrent starter (only possible without the
  // lock), then use theirs; or empty or too short, then replace it.
  const theirs = await readApiToken(dataDir)
  if (theirs !== undefined && theirs.length >= MIN_TOKEN_CHARS) return theirs
  log.error('api token %s is %s; replacing it with a new one', path, theirs === undefined ? 'empty' : `too short (${theirs.length} characters, want ${MIN_TOKEN_CHARS} or more)`)
  const tmp = `${path}.${process.pid}.tmp`
  await writeFile(tmp, token + '\n', { mode: 0o600 })
  await rename(tmp, path)
  return token
}

/** Reads the API token; undefined when there is none yet. */
export async function readApiToken (dataDir: string): Promise<string | undefined> {
  try {
    const token = (await readFile(apiTokenPath(dataDir), 'utf8')).trim()
    return token === '' ? undefined : token
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/** The HTTP status an error is answered with. */
export function httpStatusFor (err: unknown): number {
  if (err instanceof BadRequestError || err instanceof InvalidIdentifierError) return 400
  if (err instanceof NotPinnedError || err instanceof RepoNotMirroredError || err instanceof DidNotFoundError ||
    err instanceof HandleNotFoundError || err instanceof RouteNotFoundError) return 404
  if (err instanceof MethodNotAllowedError) return 405
  if (err instanceof PayloadTooLargeError) return 413
  if (err instanceof DataDirLockedError) return 409
  if ((err as Error)?.name === 'AbortError') return 503
  // What another system sent or failed to send: a bad gateway from our point of view.
  if (err instanceof IdentityError || err instanceof PdsError || err instanceof HeadError ||
    err instanceof BlockFetchError || err instanceof RepoVerificationError) return 502
  return 500
}

/** The control API server. */
export class ControlApi {
  readonly #target: ControlApiTarget
  readonly #dataDir: string
  readonly #port: number
  readonly #host: string
  #server: Server | undefined
  #token: Buffer | undefined
  #url: string | undefined
  /** Aborted on stop: long requests (a pin's first mirror) end with the node. */
  #stopping = new AbortController()

  constructor (components: ControlApiComponents, init: ControlApiInit) {
    this.#target = components.target
    this.#dataDir = init.dataDir
    this.#port = init.port ?? DEFAULT_API_PORT
    this.#host = init.host ?? '127.0.0.1'
  }

  /** `http://host:port` once started. */
  get url (): string {
    if (this.#url === undefined) throw new ControlApiError('control API not started')
    return this.#url
  }

  /** The address and port the server is bound to, once started. */
  get address (): AddressInfo {
    const address = this.#server?.address()
    if (address === undefined || address === null || typeof address === 'string') throw new ControlApiError('control API not started')
    return address
  }

  async start (): Promise<void> {
    if (this.#server !== undefined) return
    this.#stopping = new AbortController()
    this.#token = digest((await loadOrCreateApiToken(this.#dataDir)))
    const server = createServer((req, res) => { void this.#handle(req, res) })
    // A pin's first mirror can take minutes; only idle keep-alive sockets time out.
    server.requestTimeout = 60_000
    server.headersTimeout = 30_000
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.#port, this.#host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    const { port } = server.address() as AddressInfo
    const host = this.#host.includes(':') ? `[${this.#host}]` : this.#host
    this.#url = `http://${host}:${port}`
    this.#server = server
    log('control API on %s', this.#url)
  }

  async stop (): Promise<void> {
    const server = this.#server
    if (server === undefined) return
    this.#server = undefined
    this.#stopping.abort(new DOMException('the node is stopping', 'AbortError'))
    await new Promise<void>(resolve => {
      server.close(() => { resolve() })
      server.closeIdleConnections()
      // Requests still running were just aborted; give them a moment to answer 503.
      setTimeout(() => { server.closeAllConnections() }, 1000).unref()
    })
    log('control API closed')
  }

  async #handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      if (!this.#authorized(req)) {
        res.setHeader('www-authenticate', 'Bearer realm="atmirror"')
        send(res, 401, { error: 'Unauthorized', message: `missing or wrong bearer token (see ${apiTokenPath(this.#dataDir)})` })
        return
      }
      const body = await this.#route(req)
      send(res, 200, body)
    } catch (err) {
      const status = httpStatusFor(err)
      const e = err instanceof Error ? err : new Error(String(err))
      if (status >= 500) log.error('%s %s failed - %e', req.method, req.url, e)
      send(res, status, { error: e.name, message: e.message })
    }
  }

  #authorized (req: IncomingMessage): boolean {
    const header = req.headers.authorization
    if (this.#token === undefined || typeof header !== 'string') return false
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
    if (match === null) return false
    // Compare digests so lengths match and the comparison time says nothing.
    return timingSafeEqual(digest(match[1] as string), this.#token)
  }

  async #route (req: IncomingMessage): Promise<unknown> {
    const url = new URL(req.url ?? '/', 'http://localhost')
    const parts = url.pathname.split('/').filter(part => part !== '').map(part => {
      try {
        return decodeURIComponent(part)
      } catch {
        throw new BadRequestError('malformed percent-encoding in path')
      }
    })
    const method = req.method ?? 'GET'
    const signal = this.#stopping.signal
    if (parts[0] !== 'v1') throw new RouteNotFoundError(url.pathname)
    const [, resource, id, action] = parts

    if (resource === 'status' && id === undefined) {
      allow(method, ['GET'])
      return await this.#target.status({ signal })
    }
    if (resource === 'pins' && id === undefined) {
      allow(method, ['GET', 'POST'])
      if (method === 'GET') return { pins: await this.#target.listPins({ signal }) }
      const body = await readJson(req)
      return await this.#target.pinAndSync(identifierFromBody(body), { signal })
    }
    if (resource === 'pins' && id !== undefined && action === undefined) {
      allow(method, ['DELETE'])
      return await this.#target.unpin(id, { signal })
    }
    if (resource === 'repos' && id !== undefined && action === undefined) {
      allow(method, ['GET'])
      return await this.#target.repoStatus(id, { signal })
    }
    if (resource === 'repos' && id !== undefined && action === 'sync' && parts.length === 4) {
      allow(method, ['POST'])
      return await this.#target.syncRepo(id, { signal })
    }
    if (resource === 'peers' && id === undefined && this.#target.peers !== undefined) {
      allow(method, ['GET'])
      return await this.#target.peers({ signal })
    }
    if (resource === 'mirrors' && id !== undefined && action === undefined && this.#target.mirrors !== undefined) {
      allow(method, ['GET'])
      return await this.#target.mirrors(id, { signal })
    }
    throw new RouteNotFoundError(url.pathname)
  }
}

function digest (token: string): Buffer {
  return createHash('sha256').update(token).digest()
}

function allow (method: string, methods: string[]): void {
  if (!methods.includes(method)) throw new MethodNotAllowedError(method, methods)
}

function identifierFromBody (body: unknown): string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new BadRequestError('body must be a JSON object: { "did": … } or { "handle": … }')
  const { did, handle } = body as { did?: unknown, handle?: unknown }
  if (did !== undefined && handle !== undefined) throw new BadRequestError('give either did or handle, not both')
  const value = did ?? handle
  if (typeof value !== 'string' || value === '') throw new BadRequestError('body needs "did" or "handle" (a non-empty string)')
  if (did !== undefined && !value.startsWith('did:')) throw new BadRequestError('"did" must start with did:', { did: JSON.stringify(value) })
  if (handle !== undefined && value.startsWith('did:')) throw new BadRequestError('"handle" is a DID; send it as "did"')
  return value
}

async function readJson (req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > MAX_BODY_BYTES) throw new PayloadTooLargeError(MAX_BODY_BYTES)
    chunks.push(chunk)
  }
  const text = Buffer.concat(chunks).toString('utf8')
  if (text.trim() === '') throw new BadRequestError('request body is empty; expected JSON')
  try {
    return JSON.parse(text)
  } catch {
    throw new BadRequestError('request body is not valid JSON')
  }
}

function send (res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) {
    res.end()
    return
  }
  const text = JSON.stringify(body) + '\n'
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store'
  })
  res.end(text)
}
