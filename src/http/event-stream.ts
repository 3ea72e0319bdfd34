/**
 * Event streams (XRPC subscriptions, atproto.com/specs/event-stream) over undici's
 * WebSocket, on a dispatcher of the address policy (policy.ts): a DID document that
 * names a private address gets no connection, the same as for HTTP. Framing, masking
 * and close handshakes are the library's; this module bounds what a host can make
 * the mirror hold:
 * - one message: at most `maxFrameBytes`; undici fails the connection as soon as a
 *   frame's header announces more (close code 1009), before reading its payload;
 * - messages received and not yet read: at most `maxQueuedBytes`. The WebSocket API
 *   has no backpressure, so a reader that falls that far behind has the stream
 *   closed (it reconnects later from its cursor) rather than an unbounded queue.
 */
import { WebSocket, type MessageEvent, type CloseEvent, type ErrorEvent } from 'undici'
import { FirehoseConnectionError, FirehoseFrameError } from '../errors.ts'
import { createPolicyAgent, type AddressPolicyInit, type LookupFunction } from './policy.ts'

/** 5 MiB: a `#commit` carries at most 2 MB of blocks (atproto.com/specs/sync), far below it. */
export const DEFAULT_MAX_FRAME_BYTES = 5 * 1024 * 1024

export interface EventStreamClientInit extends AddressPolicyInit {
  /** Name resolution (tests map names to addresses with it). @default dns.lookup */
  lookup?: LookupFunction
  /** Until the connection is open. @default 10_000 */
  connectTimeoutMs?: number
  /** Largest message accepted. @default 5 MiB */
  maxFrameBytes?: number
  /** Bytes of messages received but not yet read before the stream is closed. @default 64 MiB */
  maxQueuedBytes?: number
}

export interface SubscribeOptions {
  signal?: AbortSignal
  /** Called once the connection is open. */
  onOpen?: () => void
}

export class EventStreamClient {
  readonly #agent: ReturnType<typeof createPolicyAgent>
  readonly #connectTimeoutMs: number
  readonly #maxQueuedBytes: number
  /** The last connection failure per `host:port`, to say why a stream could not be opened. */
  readonly #connectErrors = new Map<string, Error>()
  readonly maxFrameBytes: number

  constructor (init: EventStreamClientInit = {}) {
    this.maxFrameBytes = init.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
    this.#connectTimeoutMs = init.connectTimeoutMs ?? 10_000
    this.#maxQueuedBytes = init.maxQueuedBytes ?? 64 * 1024 * 1024
    this.#agent = createPolicyAgent({
      ...init,
      maxWebSocketMessageBytes: this.maxFrameBytes,
      onConnectError: (err, { hostname, port }) => {
        this.#connectErrors.set(targetKey(hostname, port), err)
        if (this.#connectErrors.size > 1000) this.#connectErrors.delete(this.#connectErrors.keys().next().value as string)
      }
    })
  }

  /**
   * Opens `url` (ws: or wss:) and yields each binary message. Ends when the host
   * closes the stream normally; throws FirehoseConnectionError when it cannot be
   * opened or breaks off, FirehoseFrameError for a text or oversized message.
   * Leaving the loop early closes the connection.
   */
  async * subscribe (url: string, options: SubscribeOptions = {}): AsyncGenerator<Uint8Array, void, undefined> {
    const { signal } = options
    signal?.throwIfAborted()
    const queue: Uint8Array[] = []
    let head = 0
    let queuedBytes = 0
    let opened = false
    let ended: { error?: Error } | undefined
    let wake: (() => void) | undefined
    const notify = (): void => { const w = wake; wake = undefined; w?.() }
    const end = (error?: Error): void => {
      ended ??= { error }
      notify()
    }
    const ws = new WebSocket(url, { dispatcher: this.#agent })
    ws.binaryType = 'arraybuffer'
    const timer = setTimeout(() => {
      if (!opened) {
        end(new FirehoseConnectionError(`event stream did not open within ${this.#connectTimeoutMs} ms`, { url }))
        ws.close()
      }
    }, this.#connectTimeoutMs)
    let lastError: unknown
    ws.addEventListener('open', () => {
      opened = true
      clearTimeout(timer)
      options.onOpen?.()
    })
    ws.addEventListener('message', (evt: MessageEvent) => {
      if (ended !== undefined) return
      if (!(evt.data instanceof ArrayBuffer)) {
        end(new FirehoseFrameError('malformed firehose frame: a text message', { url }))
        ws.close()
        return
      }
      const bytes = new Uint8Array(evt.data)
      queuedBytes += bytes.byteLength
      if (queuedBytes > this.#maxQueuedBytes) {
        end(new FirehoseConnectionError(`reader too slow: more than ${this.#maxQueuedBytes} bytes of events queued`, { url }))
        ws.close()
        return
      }
      queue.push(bytes)
      notify()
    })
    ws.addEventListener('error', (evt: ErrorEvent) => { lastError = evt.error ?? evt.message })
    ws.addEventListener('close', (evt: CloseEvent) => {
      clearTimeout(timer)
      if (evt.code === 1000 && opened) { end(); return }
      if (evt.code === 1009) {
        end(new FirehoseFrameError(`malformed firehose frame: larger than ${this.maxFrameBytes} bytes (close 1009)`, { url }))
        return
      }
      if (!opened) {
        const target = new URL(url)
        const key = targetKey(target.hostname, target.port === '' ? (target.protocol === 'wss:' ? 443 : 80) : target.port)
        const refused = this.#connectErrors.get(key)
        this.#connectErrors.delete(key)
        if (refused !== undefined) lastError = refused
      }
      const said = lastError instanceof Error ? lastError.message : typeof lastError === 'string' ? lastError : ''
      // undici reports a connection it failed itself (a frame over the limit: it sends
      // close 1009 and drops the socket) like one the host dropped: 1006, no reason
      const why = said !== '' ? said : evt.code === 1006 ? `closed without a close handshake (code 1006: the host dropped the connection, or sent a frame over the ${this.maxFrameBytes}-byte limit)` : `closed with code ${evt.code}${evt.reason === '' ? '' : ` (${evt.reason})`}`
      end(new FirehoseConnectionError(opened ? `event stream broke off: ${why}` : `event stream could not be opened: ${why}`, { url }, { cause: lastError }))
    })
    const onAbort = (): void => { end(); ws.close() }
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      while (true) {
        if (head < queue.length) {
          const bytes = queue[head]
          queue[head++] = EMPTY
          if (head > 1024 && head * 2 > queue.length) { queue.splice(0, head); head = 0 }
          queuedBytes -= bytes.byteLength
          yield bytes
          continue
        }
        signal?.throwIfAborted()
        if (ended !== undefined) {
          if (ended.error !== undefined) throw ended.error
          return
        }
        await new Promise<void>(resolve => { wake = resolve })
      }
    } finally {
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close()
    }
  }

  async close (): Promise<void> {
    await this.#agent.close()
  }
}

const EMPTY = new Uint8Array(0)

/** `host:port` as the connector and a stream's URL both name it (an IPv6 host without brackets). */
function targetKey (hostname: string, port: string | number): string {
  return `${hostname.replace(/^\[|\]$/g, '')}:${port}`
}
