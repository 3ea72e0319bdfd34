/**
 * A client for the control API, used by the CLI when a daemon runs on the data
 * directory. `ControlClient.forDataDir(dir)` finds the daemon through daemon.json and
 * reads the token from `<dir>/api-token`.
 */
import { request as httpRequest } from 'node:http'
import { ControlApiError } from '../errors.ts'
import { readApiToken, type MirrorsResult, type NodeStatus, type PeersResult, type PinResult, type PinnedRepo, type SyncResultJson, type UnpinResult } from './control-api.ts'
import { findRunningDaemon, type DaemonInfo } from './daemon-info.ts'

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

export class ControlClient {
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
    const daemon = await findRunningDaemon(dataDir)
    if (daemon === undefined) return undefined
    const token = await readApiToken(dataDir)
    if (token === undefined) throw new ControlApiError('a daemon runs but the API token is missing', { url: daemon.api })
    return { client: new ControlClient({ ...init, url: daemon.api, token }), daemon }
  }

  /** Like {@link forDataDir}, but a missing daemon is a {@link ControlApiError}. */
  static async requireForDataDir (dataDir: string, init: Omit<ControlClientInit, 'url' | 'token'> = {}): Promise<ControlClient> {
    const found = await ControlClient.forDataDir(dataDir, init)
    if (found === undefined) throw new ControlApiError(`no daemon is running on ${dataDir} (start one with 'atmirror daemon')`)
    return found.client
  }

  async status (options: { signal?: AbortSignal } = {}): Promise<NodeStatus> {
    return await this.#request<NodeStatus>('GET', '/v1/status', { ...options, bounded: true })
  }

  async listPins (options: { signal?: AbortSignal } = {}): Promise<PinnedRepo[]> {
    return (await this.#request<{ pins: PinnedRepo[] }>('GET', '/v1/pins', { ...options, bounded: true })).pins
  }

  /** Pins a DID or handle and waits for its first mirror. */
  async pin (didOrHandle: string, options: { signal?: AbortSignal } = {}): Promise<PinResult> {
    const body = didOrHandle.startsWith('did:') ? { did: didOrHandle } : { handle: didOrHandle }
    return await this.#request<PinResult>('POST', '/v1/pins', { ...options, body })
  }

  /** Unpins a DID or handle and waits until its blocks are collected (no time limit: see `timeoutMs`). */
  async unpin (didOrHandle: string, options: { signal?: AbortSignal } = {}): Promise<UnpinResult> {
    return await this.#request<UnpinResult>('DELETE', `/v1/pins/${encodeURIComponent(didOrHandle)}`, options)
  }

  async repo (did: string, options: { signal?: AbortSignal } = {}): Promise<PinnedRepo> {
    return await this.#request<PinnedRepo>('GET', `/v1/repos/${encodeURIComponent(did)}`, { ...options, bounded: true })
  }

  /** Syncs a pinned repo now and waits for the result (no time limit: see `timeoutMs`). */
  async sync (did: string, options: { signal?: AbortSignal } = {}): Promise<SyncResultJson> {
    return await this.#request<SyncResultJson>('POST', `/v1/repos/${encodeURIComponent(did)}/sync`, options)
  }

  /** The daemon's connected peers. */
  async peers (options: { signal?: AbortSignal } = {}): Promise<PeersResult> {
    return await this.#request<PeersResult>('GET', '/v1/peers', { ...options, bounded: true })
  }

  /** Who announces `did` on the DHT (a lookup: up to the daemon's mirror-finding time budget). */
  async mirrors (did: string, options: { signal?: AbortSignal } = {}): Promise<MirrorsResult> {
    return await this.#request<MirrorsResult>('GET', `/v1/mirrors/${encodeURIComponent(did)}`, options)
  }

  async #request<T> (method: string, path: string, options: { signal?: AbortSignal, body?: unknown, bounded?: boolean }): Promise<T> {
    const url = this.url + path
    const signals: AbortSignal[] = []
    if (options.signal !== undefined) signals.push(options.signal)
    if (options.bounded === true) signals.push(AbortSignal.timeout(this.#timeoutMs))
    const signal = signals.length === 0 ? undefined : AbortSignal.any(signals)
    const body = options.body === undefined ? undefined : JSON.stringify(options.body)
    let res: { status: number, text: string }
    try {
      res = await this.#send(url, method, body, signal)
    } catch (err) {
      if (options.signal?.aborted === true) throw options.signal.reason
      const reason = signal?.aborted === true ? `no answer within ${this.#timeoutMs} ms` : `daemon not reachable (${(err as Error).message})`
      throw new ControlApiError(`control API request failed: ${reason}`, { url }, { cause: err })
    }
    let parsed: unknown
    try {
      parsed = JSON.parse(res.text)
    } catch {
      throw new ControlApiError('control API answered something that is not JSON', { url, status: res.status })
    }
    if (res.status < 200 || res.status > 299) {
      const { error, message } = (parsed ?? {}) as { error?: string, message?: string }
      throw new ControlApiError(`${error ?? 'Error'}: ${message ?? 'request failed'}`, { url, status: res.status })
    }
    return parsed as T
  }

  /**
   * node:http rather than fetch: fetch (undici) gives up on a response whose headers
   * take more than 5 minutes, and a pin's first mirror of a large repo can.
   */
  async #send (url: string, method: string, body: string | undefined, signal: AbortSignal | undefined): Promise<{ status: number, text: string }> {
    if (this.#fetch !== undefined) {
      const res = await this.#fetch(url, { method, headers: this.#headers(body), body, signal })
      return { status: res.status, text: await res.text() }
    }
    return await new Promise((resolve, reject) => {
      const req = httpRequest(url, { method, headers: this.#headers(body), signal }, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => { chunks.push(chunk) })
        res.on('end', () => { resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }) })
        res.on('error', reject)
      })
      req.on('error', reject)
      req.end(body)
    })
  }

  #headers (body: string | undefined): Record<string, string> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.#token}` }
    if (body !== undefined) {
      headers['content-type'] = 'application/json'
      headers['content-length'] = String(Buffer.byteLength(body))
    }
    return headers
  }
}
