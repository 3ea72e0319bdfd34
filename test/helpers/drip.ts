/**
 * A slow-drip host: answers 200 at once, then sends its body a few bytes at a time
 * with a pause between, never idle long enough for an idle timeout and never done
 * in a test's lifetime. Each request is recorded from the server's side: how much
 * it sent, whether it finished, and whether the client went away first (an abort
 * seen by the server, not guessed from the client's clock).
 */
import type { ServerResponse } from 'node:http'

export interface Drip {
  /** The DID the request was for (`did` query parameter), or '' */
  did: string
  /** Bytes sent so far. */
  sent: number
  /** The whole body was sent. */
  finished: boolean
  /** The connection closed before the body was sent: the client gave up. */
  abandoned: boolean
}

export interface DripOptions {
  /** Pause between two writes. @default 20 */
  intervalMs?: number
  /** Bytes per write. @default 1 */
  bytesPerWrite?: number
  /** `content-type` of the answer. @default 'application/vnd.ipld.car' */
  contentType?: string
}

/** Sends `body` to `res` as a drip, recording it in `drips`. */
export function drip (res: ServerResponse, body: Uint8Array, drips: Drip[], did = '', options: DripOptions = {}): Drip {
  const intervalMs = options.intervalMs ?? 20
  const step = options.bytesPerWrite ?? 1
  const record: Drip = { did, sent: 0, finished: false, abandoned: false }
  drips.push(record)
  res.writeHead(200, { 'content-type': options.contentType ?? 'application/vnd.ipld.car' })
  res.flushHeaders()
  const timer = setInterval(() => {
    if (record.sent >= body.length) {
      clearInterval(timer)
      record.finished = true
      res.end()
      return
    }
    res.write(body.subarray(record.sent, record.sent + step))
    record.sent += Math.min(step, body.length - record.sent)
  }, intervalMs)
  res.on('close', () => {
    clearInterval(timer)
    if (!record.finished) record.abandoned = true
  })
  return record
}
