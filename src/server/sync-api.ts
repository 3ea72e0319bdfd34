/**
 * `com.atproto.sync` read methods from what the mirror stores and has verified, for
 * relays, AppViews and any atproto client pointed at the mirror as if it were the
 * repo's PDS (mounted on the public server, public-server.ts).
 *
 * | method            | answer |
 * | ----------------- | ------ |
 * | getLatestCommit   | the stored commit's CID and rev |
 * | getRepo           | the stored repo as a CAR, streamed (mirror/export.ts); `since` below |
 * | getRecord         | a CAR of the commit, the MST nodes on the record's path, and the record (a proof of absence without it) |
 * | getBlocks         | a CAR of the asked blocks, each one held by the DID's stored repo |
 * | getRepoStatus     | `{ did, active, status?, rev? }` for any repo the mirror has a state of |
 * | listRepos         | the stored repos by DID, paginated (cursor = the last DID) |
 *
 * What each stored status allows is the status policy's (mirror/status-policy.ts):
 * only active repos are served; the others answer the lexicon's error
 * (`RepoTakendown`, `RepoSuspended`, `RepoDeactivated`; `RepoNotFound` for a deleted
 * or unknown repo), as the PDS does, with status 400.
 *
 * `since`: the mirror keeps the current tree only, not when each block was written,
 * so it cannot cut the exact diff a PDS would. `since` at or past the stored rev
 * answers the commit alone (nothing is newer); an older `since` answers the whole
 * repo, a superset of the diff, which a client applying it over its copy accepts.
 *
 * Every block leaves through the store's hash-checked read (a damaged block is
 * refetched, never served).
 *
 * A repo's CAR at a commit never changes, so whole getRepo answers are kept in a
 * bounded cache by commit CID ({@link RepoCarCache}): a repo asked for again (relays,
 * several clients) is answered from memory instead of reading one block file per
 * block again. An answer is filled as it streams the first time, only kept when
 * complete, and served only after the status check and only while the commit is
 * still the stored one; a new commit or a status change makes it unreachable, and
 * the least recently used go first.
 */
import { Readable } from 'node:stream'
import { InvalidRequestError, type Server as XrpcServer } from '@atproto/xrpc-server'
import type { Block, ReadonlyBlockStore } from '../repo/block-store.ts'
import { writeCar } from '../repo/car.ts'
import { CID, cidKey } from '../repo/cid.ts'
import { proofNodesFor } from '../repo/mst/diff.ts'
import type { MstNode } from '../repo/mst/node.ts'
import { exportRepoCar } from '../mirror/export.ts'
import { statusRules } from '../mirror/status-policy.ts'
import type { MirrorStore, RepoState } from '../mirror/store.ts'

/** Which repos hold a block (the mirror's holder index). */
export interface HolderIndex {
  holders: (cid: CID, options?: { signal?: AbortSignal }) => AsyncIterable<string>
}

export interface ReadApiComponents {
  store: MirrorStore
}

export interface ReadApiInit {
  /**
   * Bytes of whole getRepo answers kept in memory (0: none); a CAR over a quarter
   * of it is never kept.
   *
   * @default 64 MiB
   */
  carCacheBytes?: number
}

/** Answers gathered for the cache at once (each up to a quarter of the cache). */
const MAX_FILLING = 2

/** Whole repo CARs by commit CID, least recently used dropped first. */
export class RepoCarCache {
  readonly #max: number
  readonly #entries = new Map<string, Buffer[]>()
  readonly #filling = new Set<string>()
  #bytes = 0

  constructor (maxBytes: number) {
    this.#max = maxBytes
  }

  get bytes (): number {
    return this.#bytes
  }

  get (commit: string): Buffer[] | undefined {
    const chunks = this.#entries.get(commit)
    if (chunks !== undefined) {
      this.#entries.delete(commit)
      this.#entries.set(commit, chunks)
    }
    return chunks
  }

  /**
   * `source`, passed through; kept once it ends complete and fits. Only one answer per
   * commit, and {@link MAX_FILLING} at once, are gathered: a burst of requests for a
   * repo not cached yet must not hold a copy each.
   */
  async * fill (commit: string, source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    const gather = this.#max > 0 && !this.#filling.has(commit) && this.#filling.size < MAX_FILLING
    let chunks: Buffer[] | undefined = gather ? [] : undefined
    if (gather) this.#filling.add(commit)
    let size = 0
    try {
      for await (const chunk of source) {
        if (chunks !== undefined) {
          size += chunk.length
          if (size > this.#max / 4) chunks = undefined
          else chunks.push(chunk)
        }
        yield chunk
      }
    } finally {
      if (gather) this.#filling.delete(commit)
    }
    if (chunks === undefined || this.#entries.has(commit)) return
    this.#entries.set(commit, chunks)
    this.#bytes += size
    for (const [key, old] of this.#entries) {
      if (this.#bytes <= this.#max) break
      this.#entries.delete(key)
      this.#bytes -= old.reduce((n, c) => n + c.length, 0)
    }
  }
}

/** Most CIDs one getBlocks call may ask for (a URL holds ~250 anyway: heads are capped at 16 KiB). */
const MAX_GET_BLOCKS = 1000

/** Bytes gathered into one write of a streamed CAR: one syscall per block would cost more than the block. */
const CHUNK_BYTES = 64 * 1024

const CAR = 'application/vnd.ipld.car'

/** The stored state of `did` if the status policy lets it be served; the lexicon's error otherwise. */
export async function servedState (store: Pick<MirrorStore, 'getState'>, did: string): Promise<RepoState> {
  const state = await store.getState(did)
  if (state !== undefined && statusRules(state.status).serve) return state
  if (state === undefined) throw new InvalidRequestError(`Could not find repo for DID: ${did}`, 'RepoNotFound')
  switch (state.status) {
    case 'takendown': throw new InvalidRequestError(`Repo has been takendown: ${did}`, 'RepoTakendown')
    case 'suspended': throw new InvalidRequestError(`Repo has been suspended: ${did}`, 'RepoSuspended')
    case 'deactivated': throw new InvalidRequestError(`Repo has been deactivated: ${did}`, 'RepoDeactivated')
    default: throw new InvalidRequestError(`Could not find repo for DID: ${did}`, 'RepoNotFound')
  }
}

/** A CID parameter; 400 naming it when it is not one. */
export function cidParam (text: string, what = 'cid'): CID {
  try {
    return CID.parse(text)
  } catch {
    throw new InvalidRequestError(`invalid ${what}: ${JSON.stringify(text.slice(0, 100))}`)
  }
}

/**
 * A byte stream of `source` whose first chunk is already read: an error before any
 * byte (the repo vanished, a block is missing) is still answered as an XRPC error,
 * not as a connection cut mid-answer. Small chunks are gathered to {@link CHUNK_BYTES}.
 */
async function startStream (source: AsyncIterable<Uint8Array>, cache?: { cache: RepoCarCache, commit: string }): Promise<Readable> {
  const chunks = cache === undefined ? coalesce(source) : cache.cache.fill(cache.commit, coalesce(source))
  const first = await chunks.next()
  return Readable.from((async function * () {
    if (first.done !== true) yield first.value
    yield * chunks
  })(), { objectMode: false })
}

async function * coalesce (source: AsyncIterable<Uint8Array>): AsyncGenerator<Buffer> {
  let parts: Uint8Array[] = []
  let size = 0
  for await (const part of source) {
    parts.push(part)
    size += part.length
    if (size >= CHUNK_BYTES) {
      yield Buffer.concat(parts, size)
      parts = []
      size = 0
    }
  }
  if (size > 0) yield Buffer.concat(parts, size)
}

/** The commit, the MST nodes on the path of `rpath` from the root down, and the record if the tree holds it. */
async function * recordProofBlocks (store: ReadonlyBlockStore, commit: CID, data: CID, rpath: string, options: { signal?: AbortSignal } = {}): AsyncGenerator<Block> {
  const get = async (cid: CID, what: string): Promise<Uint8Array> => {
    const bytes = await store.get(cid, options)
    if (bytes === undefined) throw new InvalidRequestError(`block not found: ${what} ${cid.toString()}`, 'BlockNotFound')
    return bytes
  }
  yield { cid: commit, bytes: await get(commit, 'commit') }
  const known = new Map<string, MstNode>()
  const path = await proofNodesFor(store, data, [rpath], known, options)
  let record: CID | undefined
  for (const cid of path) {
    yield { cid, bytes: await get(cid, 'MST node') }
    record ??= known.get(cidKey(cid))?.entries.find(entry => entry.key === rpath)?.value
  }
  if (record !== undefined) yield { cid: record, bytes: await get(record, 'record') }
}

/** Registers the com.atproto.sync read methods. */
export function syncApi (components: ReadApiComponents, init: ReadApiInit = {}): (server: XrpcServer) => void {
  const { store } = components
  const cars = new RepoCarCache(init.carCacheBytes ?? 64 * 1024 * 1024)
  return (server) => {
    server.method('com.atproto.sync.getLatestCommit', async ({ params }) => {
      const state = await servedState(store, params.did as string)
      return { encoding: 'application/json', body: { cid: state.commit, rev: state.rev } }
    })

    server.method('com.atproto.sync.getRepoStatus', async ({ params }) => {
      const did = params.did as string
      const state = await store.getState(did)
      if (state === undefined) throw new InvalidRequestError(`Could not find repo for DID: ${did}`, 'RepoNotFound')
      const active = statusRules(state.status).serve
      return {
        encoding: 'application/json',
        body: { did, active, ...(active ? { rev: state.rev } : { status: state.status }) }
      }
    })

    server.method('com.atproto.sync.getRepo', async ({ params, signal }) => {
      const did = params.did as string
      const state = await servedState(store, did)
      const since = params.since as string | undefined
      if (since !== undefined && since >= state.rev) {
        const commit = CID.parse(state.commit)
        return { encoding: CAR, body: await startStream(writeCar([commit], recordlessCommit(store, commit, did, signal))) }
      }
      const cached = cars.get(state.commit)
      if (cached !== undefined) return { encoding: CAR, body: Readable.from(cached, { objectMode: false }) }
      const car = exportCommit(store, did, state.commit, signal)
      return { encoding: CAR, body: await startStream(car, { cache: cars, commit: state.commit }) }
    })

    server.method('com.atproto.sync.getRecord', async ({ params, signal }) => {
      const did = params.did as string
      const state = await servedState(store, did)
      const rpath = `${params.collection as string}/${params.rkey as string}`
      const commit = CID.parse(state.commit)
      const blocks = recordProofBlocks(store.verifiedBlocks({ did, signal }), commit, CID.parse(state.data), rpath, { signal })
      return { encoding: CAR, body: await startStream(writeCar([commit], blocks)) }
    })

    server.method('com.atproto.sync.getBlocks', async ({ params, signal }) => {
      const did = params.did as string
      const texts = (params.cids as string[] | undefined) ?? []
      if (texts.length > MAX_GET_BLOCKS) throw new InvalidRequestError(`too many cids: ${texts.length} (at most ${MAX_GET_BLOCKS})`)
      const cids = texts.map(text => cidParam(text))
      await servedState(store, did)
      // only blocks of this repo, as a PDS answers: its holds say which, in one read
      const held = await store.holds.heldBy(did, cids)
      const missing: CID[] = []
      const blocks: Block[] = []
      for (const [i, cid] of cids.entries()) {
        const bytes = held[i] ? await store.getVerified(cid, { did, signal }) : undefined
        if (bytes === undefined) missing.push(cid)
        else blocks.push({ cid, bytes })
      }
      if (missing.length > 0) throw new InvalidRequestError(`Could not find cids: ${missing.map(cid => cid.toString()).join(',')}`, 'BlockNotFound')
      return { encoding: CAR, body: await startStream(writeCar([], blocks)) }
    })

    server.method('com.atproto.sync.listRepos', async ({ params }) => {
      const limit = (params.limit as number | undefined) ?? 500
      const cursor = params.cursor as string | undefined
      const states = (await store.listStates())
        .filter(state => cursor === undefined || state.did > cursor)
        .sort((a, b) => a.did < b.did ? -1 : a.did > b.did ? 1 : 0)
      const page = states.slice(0, limit)
      const repos = page.map(state => {
        const active = statusRules(state.status).serve
        return { did: state.did, head: state.commit, rev: state.rev, active, ...(active ? {} : { status: state.status }) }
      })
      return {
        encoding: 'application/json',
        body: { repos, ...(states.length > limit ? { cursor: page[page.length - 1].did } : {}) }
      }
    })
  }
}

/**
 * The stored repo at `commit` as a CAR (mirror/export.ts's order); GC waits while it
 * is read. Refused (RepoNotFound) when the repo moved on or stopped being served
 * since the caller looked, so a cached answer is always the commit it is filed under.
 */
async function * exportCommit (store: MirrorStore, did: string, commit: string, signal: AbortSignal): AsyncGenerator<Uint8Array> {
  const release = await store.beginWrite()
  try {
    const state = await servedState(store, did)
    if (state.commit !== commit) throw new InvalidRequestError(`the repo advanced while it was asked for; ask again (did=${did})`)
    yield * exportRepoCar(store.verifiedBlocks({ did, signal }), CID.parse(commit), { signal })
  } finally {
    await release()
  }
}

/** The commit block alone (a `since` at or past the stored rev). */
async function * recordlessCommit (store: MirrorStore, commit: CID, did: string, signal: AbortSignal): AsyncGenerator<Block> {
  const bytes = await store.getVerified(commit, { did, signal })
  if (bytes === undefined) throw new InvalidRequestError(`block not found: commit ${commit.toString()}`, 'BlockNotFound')
  yield { cid: commit, bytes }
}
