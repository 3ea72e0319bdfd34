/**
 * Event-stream frames of `com.atproto.sync.subscribeRepos` (atproto.com/specs/event-stream,
 * atproto.com/specs/sync): each binary WebSocket message is two DRISL values back to
 * back, a header `{ op, t }` and a body. `op: 1` is a message whose type `t` names
 * the body's shape (`#commit`, `#sync`, `#identity`, `#account`, `#info`); `op: -1`
 * is an error (`{ error, message }`) after which the host closes the stream.
 *
 * Both values go through the strict decoder (cbor.ts). A body is checked for the
 * fields the mirror reads, with their types, and nothing else: fields a later
 * protocol adds pass through unread, and a message type this version does not know
 * is returned as `unknown` (the spec says to ignore those). The CAR slice of a
 * `#commit` or `#sync` is left as bytes: the consumer drops events for repos it
 * does not keep before reading any block.
 */
import { FirehoseFrameError } from '../errors.ts'
import { decodeCborFirst } from './cbor.ts'
import { asCid, type CID } from './cid.ts'
import type { CommitOp } from './mst/proof.ts'

/** A `#commit`: a repo's new commit, its changed blocks and record ops. */
export interface CommitEvent {
  type: 'commit'
  seq: number
  did: string
  rev: string
  /** The rev of the previous commit (null for the first). */
  since: string | null
  commit: CID
  /** A CAR slice: the commit, the new tree's changed and neighbouring nodes, new records. */
  blocks: Uint8Array
  ops: CommitOp[]
  /** The previous commit's `data` (sync 1.1); absent from older hosts. */
  prevData?: CID
  /** The host left blocks out; the repo must be fetched. */
  tooBig: boolean
  time: string
}

/** A `#sync`: the repo is now at this commit, whatever came before (a CAR slice holding only the commit). */
export interface SyncEvent {
  type: 'sync'
  seq: number
  did: string
  rev: string
  blocks: Uint8Array
  time: string
}

/** An `#identity`: the DID document or handle may have changed. */
export interface IdentityEvent {
  type: 'identity'
  seq: number
  did: string
  handle?: string
  time: string
}

/** An `#account`: the account's hosting status changed. */
export interface AccountEvent {
  type: 'account'
  seq: number
  did: string
  active: boolean
  /** Why it is not active: `takendown`, `suspended`, `deleted`, `deactivated`, … */
  status?: string
  time: string
}

/** An `#info`: a note from the host (`OutdatedCursor`: the cursor asked for is older than it keeps). */
export interface InfoEvent {
  type: 'info'
  name: string
  message?: string
}

/** An error frame (`op: -1`), e.g. `FutureCursor` or `ConsumerTooSlow`; the host closes the stream after it. */
export interface ErrorFrame {
  type: 'error'
  error: string
  message?: string
}

/** A message type this version does not know (ignored, but its `seq` still counts). */
export interface UnknownEvent {
  type: 'unknown'
  t: string
  seq?: number
}

export type FirehoseMessage = CommitEvent | SyncEvent | IdentityEvent | AccountEvent | InfoEvent | ErrorFrame | UnknownEvent

export interface ParseFrameOptions {
  /** Named in errors. */
  url?: string
}

type Fields = Record<string, unknown>

/** Decodes one binary frame; throws {@link FirehoseFrameError} saying what is wrong. */
export function parseFrame (bytes: Uint8Array, options: ParseFrameOptions = {}): FirehoseMessage {
  const { url } = options
  const fail = (what: string, cause?: unknown): FirehoseFrameError =>
    new FirehoseFrameError(`malformed firehose frame: ${what}`, { url }, cause === undefined ? undefined : { cause })
  let header: unknown
  let body: unknown
  try {
    const [first, rest] = decodeCborFirst(bytes)
    header = first
    if (rest.byteLength === 0) throw fail('no body after the header')
    const [second, after] = decodeCborFirst(rest)
    if (after.byteLength > 0) throw fail(`${after.byteLength} bytes after the body`)
    body = second
  } catch (err) {
    if (err instanceof FirehoseFrameError) throw err
    throw fail((err as Error).message, err)
  }
  if (!isFields(header)) throw fail('header is not a map')
  if (!isFields(body)) throw fail('body is not a map')
  if (header.op === -1) {
    return { type: 'error', error: str(body, 'error', fail), message: optStr(body, 'message', fail) }
  }
  if (header.op !== 1) throw fail(`header op ${String(header.op)} is neither 1 nor -1`)
  const t = header.t
  if (typeof t !== 'string') throw fail('header has no message type t')
  switch (t) {
    case '#commit': return commitEvent(body, fail)
    case '#sync':
      return { type: 'sync', seq: seq(body, fail), did: str(body, 'did', fail), rev: str(body, 'rev', fail), blocks: bytesOf(body, 'blocks', fail), time: str(body, 'time', fail) }
    case '#identity':
      return { type: 'identity', seq: seq(body, fail), did: str(body, 'did', fail), handle: optStr(body, 'handle', fail), time: str(body, 'time', fail) }
    case '#account': {
      if (typeof body.active !== 'boolean') throw fail('#account: active is not a boolean')
      return { type: 'account', seq: seq(body, fail), did: str(body, 'did', fail), active: body.active, status: optStr(body, 'status', fail), time: str(body, 'time', fail) }
    }
    case '#info':
      return { type: 'info', name: str(body, 'name', fail), message: optStr(body, 'message', fail) }
    default: {
      const n = body.seq
      return { type: 'unknown', t, seq: typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 ? n : undefined }
    }
  }
}

function commitEvent (body: Fields, fail: (what: string) => Error): CommitEvent {
  const commit = asCid(body.commit)
  if (commit === null) throw fail('#commit: commit is not a CID link')
  if (typeof body.tooBig !== 'boolean') throw fail('#commit: tooBig is not a boolean')
  if (!Array.isArray(body.ops)) throw fail('#commit: ops is not an array')
  const ops = body.ops.map((op: unknown, i): CommitOp => {
    if (!isFields(op)) throw fail(`#commit: op ${i} is not a map`)
    const action = op.action
    if (action !== 'create' && action !== 'update' && action !== 'delete') throw fail(`#commit: op ${i} has action ${JSON.stringify(action)}`)
    const cid = op.cid === null ? null : asCid(op.cid)
    if (cid === null && op.cid !== null) throw fail(`#commit: op ${i} cid is not a CID link or null`)
    const prev = op.prev === undefined || op.prev === null ? null : asCid(op.prev)
    if (prev === null && op.prev !== undefined && op.prev !== null) throw fail(`#commit: op ${i} prev is not a CID link`)
    return { action, path: str(op, 'path', fail), cid, prev }
  })
  let prevData: CID | undefined
  if (body.prevData !== undefined && body.prevData !== null) {
    const cid = asCid(body.prevData)
    if (cid === null) throw fail('#commit: prevData is not a CID link')
    prevData = cid
  }
  const since = body.since
  if (since !== null && typeof since !== 'string') throw fail('#commit: since is neither a string nor null')
  return {
    type: 'commit',
    seq: seq(body, fail),
    did: str(body, 'repo', fail),
    rev: str(body, 'rev', fail),
    since,
    commit,
    blocks: bytesOf(body, 'blocks', fail),
    ops,
    prevData,
    tooBig: body.tooBig,
    time: str(body, 'time', fail)
  }
}

function isFields (value: unknown): value is Fields {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array) && asCid(value) === null
}

function seq (body: Fields, fail: (what: string) => Error): number {
  const n = body.seq
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw fail('seq is not a non-negative integer')
  return n
}

function str (body: Fields, key: string, fail: (what: string) => Error): string {
  const value = body[key]
  if (typeof value !== 'string') throw fail(`${key} is not a string`)
  return value
}

function optStr (body: Fields, key: string, fail: (what: string) => Error): string | undefined {
  const value = body[key]
  if (value === undefined || value === null) return undefined
  if (typeof value !== 'string') throw fail(`${key} is not a string`)
  return value
}

function bytesOf (body: Fields, key: string, fail: (what: string) => Error): Uint8Array {
  const value = body[key]
  if (!(value instanceof Uint8Array)) throw fail(`${key} is not a byte string`)
  return value
}
