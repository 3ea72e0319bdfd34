/**
 * A client for the control API, used by the CLI when a daemon runs on the data
 * directory. `ControlClient.forDataDir(dir)` finds the daemon through daemon.json and
 * reads the token from `<dir>/api-token`. It implements {@link MirrorApi} like the
 * node does: same operations, same domain types, and a daemon's error is thrown
 * under its own name ({@link DaemonError}).
 */
import { ControlApiError, DaemonError } from '../errors.ts'
import type { GetBlockOptions, MirrorApi, MirrorApiOptions, MirrorSyncOptions, MirrorsResult, NodeStatus, PeersResult, PinResult, PinnedRepo, UnpinResult } from '../mirror/api.ts'
import type { SyncResult } from '../mirror/sync.ts'
import type { CID } from 'multiformats/cid'
import {
  NDJSON, pinResultFromJson, readApiToken, syncResultFromJson, type PinResultJson, type StreamLine, type SyncResultJson
} from './control-api.ts'
import { inspectDaemon, type DaemonInfo } from './daemon-info.ts'
import { nodeHttp } from './node-http.ts'

export interface ControlClientInit {
  /** Base URL, e.g. `http://127.0.0.1:5176`. */
  url: string
  token: string
  /**
   * Time limit for quick requests (status, pin list, repo, peers), in ms. Pinning,
   * unpinning and syncing have none: a sync waits for the DID's earlier jobs and a
   * free slot and can take minutes; an unpin aborts the DID's running sync and then
   * collects its blocks. They run until done or until the caller's signal aborts
   * them (Ctrl-C in the CLI). The daemon finishes an operation it has started either way.
   *
   * @default 10000
   */
  timeoutMs?: number
  /** Send requests through this fetch instead of node:http. */
  fetch?: typeof globalThis.fetch
}

interface Answer {
  status: number
  body: Buffer
  type: string
}

export class ControlClient implements MirrorApi {
  readonly url: string
  readonly #token: string
  readonly #timeoutMs: number
  readonly #fetch: typeof globalThis.fetch | undefined

  constructor (init: ControlClientInit) {
    this.url = init.url.replace(/\/+$/, '')
    this.#token = init.token
    this.#timeoutMs = init.timeoutMs ?? 10_000
    this.#fetch = init.fetch
  }

  /**
   * A client for the daemon running on `dataDir`, or undefined when none runs.
   * Throws ControlApiError when a daemon runs but its token cannot be read.
   */
  static async forDataDir (dataDir: string, init: Omit<ControlClientInit, 'url' | 'token'> = {}): Promise<{ client: ControlClient, daemon: DaemonInfo } | undefined> {
    const { running: daemon } = await inspectDaemon(dataDir)
    if (daemon === undefined) return undefined
    const token = await readApiToken(dataDir)
    if (token === undefined) throw new ControlApiError('a daemon runs but the API token is missing', { url: daemon.api })
    return { client: new ControlClient({ ...init, url: daemon.api, token }), daemon }
  }

  /**
   * Like {@link forDataDir}, but a missing daemon is a {@link ControlApiError} that
   * says so (and names the pid of a daemon that was killed without cleaning up).
   */
  static async requireForDataDir (dataDir: string, init: Omit<ControlClientInit, 'url' | 'token'> = {}): Promise<ControlClient> {
    const found = await ControlClient.forDataDir(dataDir, init)
    if (found !== undefined) return found.client
    const { stale } = await inspectDaemon(dataDir)
    const left = stale === undefined ? '' : `; the daemon that ran there (pid ${stale.pid}) is gone without cleaning up`
    throw new ControlApiError(`no daemon is running on ${dataDir}${left} (start one with 'atmirror daemon')`)
  }

  async status (options: MirrorApiOptions = {}): Promise<NodeStatus> {
    return await this.#json<NodeStatus>('GET', '/v1/status', { ...options, bounded: true })
  }

  async listPins (options: MirrorApiOptions = {}): Promise<PinnedRepo[]> {
    return (await this.#json<{ pins: PinnedRepo[] }>('GET', '/v1/pins', { ...options, bounded: true })).pins
  }

  /** Pins a DID or handle and waits for its first mirror (no time limit: see `timeoutMs`). */
  async pin (didOrHandle: string, options: MirrorSyncOptions = {}): Promise<PinResult> {
    const body = didOrHandle.startsWith('did:') ? { did: didOrHandle } : { handle: didOrHandle }
    return pinResultFromJson(await this.#sync<PinResultJson>('POST', `/v1/pins${syncQuery(options)}`, body, options))
  }

  /** Mirrors a DID or handle once, pinned if that succeeds (no time limit: see `timeoutMs`). */
  async mirror (didOrHandle: string, options: MirrorSyncOptions = {}): Promise<SyncResult> {
    const body = didOrHandle.startsWith('did:') ? { did: didOrHandle } : { handle: didOrHandle }
    return syncResultFromJson(await this.#sync<SyncResultJson>('POST', `/v1/mirror${syncQuery(options)}`, body, options))
  }

  /** Unpins a DID or handle and waits until its blocks are collected (no time limit: see `timeoutMs`). */
  async unpin (didOrHandle: string, options: MirrorApiOptions = {}): Promise<UnpinResult> {
    return await this.#json<UnpinResult>('DELETE', `/v1/pins/${encodeURIComponent(didOrHandle)}`, options)
  }

  async repo (didOrHandle: string, options: MirrorApiOptions = {}): Promise<PinnedRepo> {
    return await this.#json<PinnedRepo>('GET', `/v1/repos/${encodeURIComponent(didOrHandle)}`, { ...options, bounded: true })
  }

  /** Syncs a pinned repo now and waits for the result (no time limit: see `timeoutMs`). */
  async sync (didOrHandle: string, options: MirrorSyncOptions = {}): Promise<SyncResult> {
    return syncResultFromJson(await this.#sync<SyncResultJson>('POST', `/v1/repos/${encodeURIComponent(didOrHandle)}/sync${options.check === true ? '?check=1' : ''}`, undefined, options))
  }

  /** The daemon's connected peers. */
  async peers (options: MirrorApiOptions = {}): Promise<PeersResult> {
    return await this.#json<PeersResult>('GET', '/v1/peers', { ...options, bounded: true })
  }

  /** Who announces `did` on the DHT (a lookup: up to the daemon's mirror-finding time budget). */
  async mirrors (didOrHandle: string, options: MirrorApiOptions = {}): Promise<MirrorsResult> {
    return await this.#json<MirrorsResult>('GET', `/v1/mirrors/${encodeURIComponent(didOrHandle)}`, options)
  }

  /** A block through the daemon's fetch chain: its store, Bitswap, and with `did` that DID's PDS. */
  async getBlock (cid: CID, options: GetBlockOptions = {}): Promise<Uint8Array> {
    const params = new URLSearchParams()
    if (options.did !== undefined) params.set('did', options.did)
    if (options.local === true) params.set('local', 'true')
    const query = params.size === 0 ? '' : `?${params.toString()}`
    const answer = await this.#request('GET', `/v1/blocks/${cid.toString()}${query}`, options)
    return new Uint8Array(answer.body.buffer, answer.body.byteOffset, answer.body.byteLength)
  }

  /** A syncing request: one JSON answer, or with `onProgress` a stream of progress lines and the result. */
  async #sync<T> (method: string, path: string, body: unknown, options: MirrorSyncOptions): Promise<T> {
    const { onProgress } = options
    if (onProgress === undefined) return await this.#json<T>(method, path, { ...options, body })
    let result: { value: T } | undefined
    const url = this.url + path
    await this.#request(method, path, {
      ...options,
      body,
      accept: NDJSON,
      onLine: (text) => {
        let line: StreamLine<T>
        try {
          line = JSON.parse(text) as StreamLine<T>
        } catch {
          throw new ControlApiError('control API streamed a line that is not JSON', { url })
        }
        if ('progress' in line) onProgress(line.progress)
        else if ('result' in line) result = { value: line.result }
        else if ('error' in line) throw new DaemonError(line.error.name, line.error.message, { url, status: line.error.status })
      }
    })
    if (result === undefined) throw new ControlApiError('control API stream ended without a result', { url })
    return result.value
  }

  async #json<T> (method: string, path: string, options: { signal?: AbortSignal, body?: unknown, bounded?: boolean }): Promise<T> {
    const answer = await this.#request(method, path, options)
    try {
      return JSON.parse(answer.body.toString('utf8')) as T
    } catch {
      throw new ControlApiError('control API answered something that is not JSON', { url: this.url + path, status: answer.status })
    }
  }

  /**
   * One request. A non-2xx answer throws: the daemon's error under its own name, or
   * ControlApiError for what is about the API itself (token, transport, time limit).
   * With `onLine`, a 2xx body is handed over line by line as it arrives.
   */
  async #request (method: string, path: string, options: { signal?: AbortSignal, body?: unknown, bounded?: boolean, accept?: string, onLine?: (line: string) => void }): Promise<Answer> {
    const url = this.url + path
    const signals: AbortSignal[] = []
    if (options.signal !== undefined) signals.push(options.signal)
    if (options.bounded === true) signals.push(AbortSignal.timeout(this.#timeoutMs))
    const signal = signals.length === 0 ? undefined : AbortSignal.any(signals)
    const body = options.body === undefined ? undefined : JSON.stringify(options.body)
    let answer: Answer
    try {
      answer = await this.#send(url, method, { body, accept: options.accept, signal, onLine: options.onLine })
    } catch (err) {
      if (options.signal?.aborted === true) throw options.signal.reason
      if (err instanceof DaemonError || err instanceof ControlApiError) throw err
      const code = (err as NodeJS.ErrnoException).code
      const reason = signal?.aborted === true
        ? `no answer within ${this.#timeoutMs} ms`
        : code === 'ECONNREFUSED' || code === 'ECONNRESET'
          ? 'the daemon does not answer: it has stopped or was killed'
          : `daemon not reachable (${(err as Error).message})`
      throw new ControlApiError(`control API request failed: ${reason}`, { url }, { cause: err })
    }
    if (answer.status >= 200 && answer.status <= 299) return answer
    let parsed: { error?: unknown, message?: unknown } = {}
    try {
      parsed = JSON.parse(answer.body.toString('utf8')) ?? {}
    } catch {
      throw new ControlApiError('control API answered something that is not JSON', { url, status: answer.status })
    }
    const name = typeof parsed.error === 'string' ? parsed.error : undefined
    const message = typeof parsed.message === 'string' ? parsed.message : 'request failed'
    if (answer.status === 401 || name === undefined || !/^[A-Za-z]+$/.test(name)) {
      throw new ControlApiError(`${name ?? 'Error'}: ${message}`, { url, status: answer.status })
    }
    throw new DaemonError(name, message, { url, status: answer.status })
  }

  /**
   * node:http rather than fetch: fetch (undici) gives up on a response whose headers
   * take more than 5 minutes, and a pin's first mirror of a large repo can.
   */
  async #send (url: string, method: string, init: { body?: string, accept?: string, signal?: AbortSignal, onLine?: (line: string) => void }): Promise<Answer> {
    const headers = this.#headers(init.body, init.accept)
    if (this.#fetch !== undefined) {
      const res = await this.#fetch(url, { method, headers, body: init.body, signal: init.signal })
      const answer = { status: res.status, body: Buffer.from(await res.arrayBuffer()), type: res.headers.get('content-type') ?? '' }
      if (init.onLine !== undefined && res.ok) {
        for (const line of answer.body.toString('utf8').split('\n')) if (line.trim() !== '') init.onLine(line)
      }
      return answer
    }
    return await new Promise((resolve, reject) => {
      const req = nodeHttp.request(url, { method, headers, signal: init.signal }, (res) => {
        const status = res.statusCode ?? 0
        const type = res.headers['content-type'] ?? ''
        const onLine = status >= 200 && status <= 299 ? init.onLine : undefined
        const chunks: Buffer[] = []
        let pending = ''
        res.on('data', (chunk: Buffer) => {
          if (onLine === undefined) {
            chunks.push(chunk)
            return
          }
          pending += chunk.toString('utf8')
          let newline: number
          try {
            while ((newline = pending.indexOf('\n')) >= 0) {
              const line = pending.slice(0, newline)
              pending = pending.slice(newline + 1)
              if (line.trim() !== '') onLine(line)
            }
          } catch (err) {
            res.destroy()
            reject(err)
          }
        })
        res.on('end', () => {
          try {
            if (onLine !== undefined && pending.trim() !== '') onLine(pending)
          } catch (err) {
            reject(err)
            return
          }
          resolve({ status, body: Buffer.concat(chunks), type })
        })
        res.on('error', reject)
      })
      req.on('error', reject)
      req.end(init.body)
    })
  }

  #headers (body: string | undefined, accept: string | undefined): Record<string, string> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.#token}` }
    if (accept !== undefined) headers.accept = accept
    if (body !== undefined) {
      headers['content-type'] = 'application/json'
      headers['content-length'] = String(Buffer.byteLength(body))
    }
    return headers
  }
}

/** `?check=1&blobs=0` from a sync's options (control-api.ts reads them). */
function syncQuery (options: MirrorSyncOptions): string {
  const params = new URLSearchParams()
  if (options.check === true) params.set('check', '1')
  if (options.blobs !== undefined) params.set('blobs', options.blobs ? '1' : '0')
  const query = params.toString()
  return query === '' ? '' : `?${query}`
}
