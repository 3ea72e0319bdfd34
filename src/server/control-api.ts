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
 * | POST   | /v1/pins[?check=1][&blobs=0] | body { did } or { handle }: pins, mirrors once (blobs=0: without blobs); PinResultJson |
 * | POST   | /v1/mirror[?check=1][&blobs=0] | body as for /v1/pins: mirrors once, pinned if it succeeds; SyncResultJson |
 * | DELETE | /v1/pins/:did          | UnpinResult                                    |
 * | GET    | /v1/repos/:did         | PinnedRepo                                     |
 * | POST   | /v1/repos/:did/sync[?check=1] | SyncResultJson                          |
 * | GET    | /v1/peers              | PeersResult (connected peers)                  |
 * | GET    | /v1/mirrors/:did       | MirrorsResult (who announces the DID)          |
 * | GET    | /v1/blocks/:cid[?did=][&local=true] | the block's bytes (application/vnd.ipld.raw), through the fetch chain (`local`: the store alone) |
 *
 * The types are those of {@link MirrorApi} (src/mirror/api.ts), CIDs as strings.
 * The three syncing routes stream when asked with `Accept: application/x-ndjson`:
 * `{"progress":…}` lines, then one `{"result":…}` or `{"error":{name,message,status}}`
 * line ({@link StreamLine}).
 *
 * Errors are `{ error: <error name>, message }` with 400 (bad input), 401 (token),
 * 404 (not pinned / not mirrored / unknown DID or route), 405, 413, 502 (the PDS or
 * the network failed), 503 (shutting down) or 500. The client throws them under
 * their own name (DaemonError), so a verb fails alike with and without a daemon.
 */
import { randomBytes, createHash, timingSafeEqual } from 'node:crypto'
import { chmod, readFile, rename, stat, writeFile } from 'node:fs/promises'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { logger } from '@libp2p/logger'
import type { GetBlockOptions, MirrorApi, MirrorSyncOptions, PinResult } from '../mirror/api.ts'
import type { SyncProgress, SyncResult } from '../mirror/sync.ts'
import type { BlobPassResult } from '../mirror/blobs.ts'
import { CID } from 'multiformats/cid'
import {
  BadRequestError, BlockFetchError, BlockNotFoundError, ControlApiError, DataDirLockedError, DidNotFoundError, HandleNotFoundError, HeadError,
  IdentityError, InvalidIdentifierError, MethodNotAllowedError, NotPinnedError, PayloadTooLargeError, PdsError,
  RepoNotMirroredError, RepoVerificationError, RouteNotFoundError
} from '../errors.ts'
import { closeHttp, listenHttp, nodeHttp } from './node-http.ts'

const log = logger('atmirror:api')

/** The default control API port. */
export const DEFAULT_API_PORT = 5176

/** The media type of streamed answers (JSON lines). */
export const NDJSON = 'application/x-ndjson'

/** Least time between two streamed progress lines of one phase. */
const PROGRESS_INTERVAL_MS = 100

/** How long requests still running at shutdown get to answer before their connections are cut, in ms. */
const FORCE_CLOSE_MS = 1000

/** The longest request body the API reads. */
const MAX_BODY_BYTES = 16 * 1024

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
  /** Where the head came from: `pds:<url>` or `peer:<peer id>`. */
  source: string
  /** Where the DID document came from (`Identity.source`). */
  identitySource?: string
  /** The PDS offered an older signed rev than the stored one (kept); see SyncResult. */
  rollback?: { rev: string, commit: string }
  /** Damaged or missing blocks refetched when an unchanged repo's stored copy was checked. */
  repaired?: number
  /** The blob pass after the sync (SyncResult.blobs). */
  blobs?: BlobPassResult
}

/** A pin result in JSON form. */
export interface PinResultJson extends Omit<PinResult, 'sync'> {
  sync: SyncResultJson
}

/**
 * One line of a streamed answer (`Accept: application/x-ndjson` on POST /v1/pins and
 * POST /v1/repos/:did/sync): progress lines, then one result or one error line.
 */
export type StreamLine<T> = { progress: SyncProgress } | { result: T } | { error: { name: string, message: string, status: number } }

export function syncResultJson (result: SyncResult): SyncResultJson {
  return {
    did: result.did,
    rev: result.rev,
    commit: result.commit.toString(),
    records: result.records,
    changed: result.changed,
    full: result.full,
    fetched: { ...result.fetched },
    bytes: result.bytes,
    seconds: result.seconds,
    source: result.source,
    ...(result.identitySource === undefined ? {} : { identitySource: result.identitySource }),
    ...(result.repaired === undefined ? {} : { repaired: result.repaired }),
    ...(result.blobs === undefined ? {} : { blobs: { ...result.blobs, fetched: { ...result.blobs.fetched } } }),
    ...(result.rollback === undefined ? {} : { rollback: { rev: result.rollback.rev, commit: result.rollback.commit.toString() } })
  }
}

export function syncResultFromJson (json: SyncResultJson): SyncResult {
  const { rollback, ...rest } = json
  return {
    ...rest,
    commit: CID.parse(json.commit),
    fetched: { ...json.fetched },
    ...(rollback === undefined ? {} : { rollback: { rev: rollback.rev, commit: CID.parse(rollback.commit) } })
  }
}

export function pinResultJson (result: PinResult): PinResultJson {
  return { ...result, sync: syncResultJson(result.sync) }
}

export function pinResultFromJson (json: PinResultJson): PinResult {
  return { ...json, sync: syncResultFromJson(json.sync) }
}

export interface ControlApiComponents {
  target: MirrorApi
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
  if (err instanceof NotPinnedError || err instanceof RepoNotMirroredError || err instanceof DidNotFoundError || err instanceof BlockNotFoundError ||
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
  readonly #target: MirrorApi
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
    const server = nodeHttp.createServer((req, res) => { void this.#handle(req, res) })
    // A pin's first mirror can take minutes; only idle keep-alive sockets time out.
    server.requestTimeout = 60_000
    server.headersTimeout = 30_000
    this.#url = await listenHttp(server, { host: this.#host, port: this.#port, what: 'control API' })
    this.#server = server
    log('control API on %s', this.#url)
  }

  async stop (): Promise<void> {
    const server = this.#server
    if (server === undefined) return
    this.#server = undefined
    this.#stopping.abort(new DOMException('the node is stopping', 'AbortError'))
    // Requests still running were just aborted: they get a moment to answer 503,
    // then whatever connection is still open is cut.
    await closeHttp(server, FORCE_CLOSE_MS)
    log('control API closed')
  }

  async #handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      if (!this.#authorized(req)) {
        res.setHeader('www-authenticate', 'Bearer realm="atmirror"')
        send(res, 401, { error: 'Unauthorized', message: `missing or wrong bearer token (see ${apiTokenPath(this.#dataDir)})` })
        return
      }
      const answer = await this.#route(req)
      if (answer instanceof Uint8Array) sendBytes(res, answer)
      else if (answer instanceof Streamed) await stream(res, answer.run, req)
      else send(res, 200, answer)
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

  /** A JSON body, block bytes, or (NDJSON requested) a sync to stream. */
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
    const streamed = (req.headers.accept ?? '').includes(NDJSON)
    /** The sync's answer: at once as JSON, or later, streamed with its progress. */
    // ?check=1: an unchanged repo's stored copy is checked and repaired (MirrorSyncOptions.check)
    const check = url.searchParams.get('check') === '1'
    // ?blobs=0 / ?blobs=1: the pin's blob setting (MirrorSyncOptions.blobs)
    const blobsParam = url.searchParams.get('blobs')
    const blobs = blobsParam === null ? undefined : blobsParam !== '0'
    const syncAnswer = async <T>(run: (options: MirrorSyncOptions) => Promise<T>, toJson: (value: T) => unknown): Promise<unknown> => {
      if (!streamed) return toJson(await run({ signal, check, blobs }))
      return new Streamed(async (onProgress) => toJson(await run({ signal, check, blobs, onProgress })))
    }
    if (parts[0] !== 'v1') throw new RouteNotFoundError(url.pathname)
    const [, resource, id, action] = parts

    if (resource === 'status' && id === undefined) {
      allow(method, ['GET'])
      return await this.#target.status({ signal })
    }
    if (resource === 'pins' && id === undefined) {
      allow(method, ['GET', 'POST'])
      if (method === 'GET') return { pins: await this.#target.listPins({ signal }) }
      const target = identifierFromBody(await readJson(req))
      return await syncAnswer(async (options) => await this.#target.pin(target, options), pinResultJson)
    }
    if (resource === 'mirror' && id === undefined) {
      allow(method, ['POST'])
      const target = identifierFromBody(await readJson(req))
      return await syncAnswer(async (options) => await this.#target.mirror(target, options), syncResultJson)
    }
    if (resource === 'pins' && id !== undefined && action === undefined) {
      allow(method, ['DELETE'])
      return await this.#target.unpin(id, { signal })
    }
    if (resource === 'repos' && id !== undefined && action === undefined) {
      allow(method, ['GET'])
      return await this.#target.repo(id, { signal })
    }
    if (resource === 'repos' && id !== undefined && action === 'sync' && parts.length === 4) {
      allow(method, ['POST'])
      return await syncAnswer(async (options) => await this.#target.sync(id, options), syncResultJson)
    }
    if (resource === 'peers' && id === undefined) {
      allow(method, ['GET'])
      return await this.#target.peers({ signal })
    }
    if (resource === 'mirrors' && id !== undefined && action === undefined) {
      allow(method, ['GET'])
      return await this.#target.mirrors(id, { signal })
    }
    if (resource === 'blocks' && id !== undefined && action === undefined) {
      allow(method, ['GET'])
      let cid: CID
      try {
        cid = CID.parse(id)
      } catch (err) {
        throw new BadRequestError('not a CID', { cid: JSON.stringify(id) }, { cause: err })
      }
      const options: GetBlockOptions = { signal }
      const did = url.searchParams.get('did')
      if (did !== null) options.did = did
      if (url.searchParams.get('local') === 'true') options.local = true
      return await this.#target.getBlock(cid, options)
    }
    throw new RouteNotFoundError(url.pathname)
  }
}

/** A route's answer that is streamed as the work goes on. */
class Streamed {
  readonly run: (onProgress: (progress: SyncProgress) => void) => Promise<unknown>
  constructor (run: Streamed['run']) {
    this.run = run
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

function sendBytes (res: ServerResponse, bytes: Uint8Array): void {
  res.writeHead(200, {
    'content-type': 'application/vnd.ipld.raw',
    'content-length': bytes.byteLength,
    'cache-control': 'no-store'
  })
  res.end(bytes)
}

/**
 * Streams a sync: its progress as it goes (at most one line per
 * {@link PROGRESS_INTERVAL_MS}, and on every phase change), then the result or the
 * error, each a JSON line ({@link StreamLine}). The status is 200 once streaming
 * starts; an error is the last line.
 */
async function stream (res: ServerResponse, run: (onProgress: (p: SyncProgress) => void) => Promise<unknown>, req: IncomingMessage): Promise<void> {
  res.writeHead(200, { 'content-type': `${NDJSON}; charset=utf-8`, 'cache-control': 'no-store' })
  const write = (line: StreamLine<unknown>): void => { res.write(JSON.stringify(line) + '\n') }
  let last = 0
  let phase = ''
  try {
    const result = await run((progress) => {
      const now = performance.now()
      if (progress.phase === phase && now - last < PROGRESS_INTERVAL_MS) return
      phase = progress.phase
      last = now
      write({ progress })
    })
    write({ result })
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err))
    const status = httpStatusFor(e)
    if (status >= 500) log.error('%s %s failed - %e', req.method, req.url, e)
    write({ error: { name: e.name, message: e.message, status } })
  }
  res.end()
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
