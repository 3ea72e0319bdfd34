/**
 * Applying firehose events to a stored repo, without `getRepo`.
 *
 * A `#commit` is taken only when everything holds: the event's blocks hash to
 * their CIDs (the CAR reader), its root is the commit it names, the commit is for
 * the event's DID and rev and is signed by the DID's current key (the DID document
 * is fetched again once when it is not: keys rotate), the sync 1.1 proof holds (the
 * ops, undone on the event's partial tree, give `prevData`), and `prevData` is the
 * stored tree's root. The advance is then verified in proportion to the change
 * (verifyIncremental, over the event's blocks laid on the stored ones) before
 * anything is written, and goes through the same path as a sync's: the new blocks
 * staged and written, one atomic advance with the hold and blob-reference changes,
 * and garbage collection once the writer leaves. Consecutive events of one repo
 * are applied as a run: each verified on top of the ones before it, all written
 * as one advance (applyCommitEvents).
 *
 * What the outcome is, and who acts on it (follower.ts):
 * - `applied`: the repo advanced;
 * - `ignored`: a rev not newer than the stored one (a replay after a restart, or an
 *   event a relay and the PDS both sent);
 * - `resync`: the event cannot be applied on what is stored (a gap: `prevData` is
 *   not the stored root, `tooBig`, no `prevData`, blocks the new tree needs are not
 *   in the event, nothing stored yet): the repo is synced from its PDS instead;
 * - a thrown error: the event is refused (bad signature, proof, blocks, a DID the
 *   host does not serve); nothing is written.
 */
import { logger } from '@libp2p/logger'
import { CommitInvalidError, CommitSignatureError, FirehoseEventRefusedError, MissingBlockError } from '../errors.ts'
import { compareRevs } from '../head/head-resolver.ts'
import type { Identity, IdentityResolver } from '../identity/resolver.ts'
import { MemoryBlockStore, type Block } from '../repo/block-store.ts'
import { readCar } from '../repo/car.ts'
import { CID, cidKey } from '../repo/cid.ts'
import { decodeCommit, verifyCommitSignature, type Commit } from '../repo/commit.ts'
import type { CommitEvent, SyncEvent } from '../repo/firehose.ts'
import { verifyCommitProof } from '../repo/mst/proof.ts'
import { verifyIncremental, type IncrementalVerification } from '../repo/verify-incremental.ts'
import { OverlayBlockStore } from '../repo/block-store.ts'
import type { BlobDelta } from './blob-store.ts'
import { BlobScan, blobDelta, blobRecount } from './blobs.ts'
import { HoldDelta } from './gc.ts'
import type { MirrorStore, RepoState } from './store.ts'
import { holdsBlocks } from './status-policy.ts'

const log = logger('atmirror:mirror:follow')
const repoLog = logger('atmirror:repo')

export type ApplyOutcome =
  | { outcome: 'applied', state: RepoState, blocks: number, bytes: number }
  | { outcome: 'ignored', why: string }
  | { outcome: 'resync', why: string }

export interface ApplyComponents {
  store: MirrorStore
  identity: IdentityResolver
}

export interface ApplyOptions {
  signal?: AbortSignal
  /** The stream the event came from (named in errors and checked against the DID's PDS). */
  url: string
  /**
   * The stream is a relay's, which carries every DID; otherwise the DID's PDS (as
   * stored, or as its DID document names it) must be the stream's host.
   */
  relay: boolean
}

/** The origin of an http(s) or ws(s) URL, with the ws schemes read as http(s). */
export function hostOrigin (url: string): string {
  const parsed = new URL(url)
  if (parsed.protocol === 'ws:') parsed.protocol = 'http:'
  else if (parsed.protocol === 'wss:') parsed.protocol = 'https:'
  return parsed.origin
}

/** What became of one `#commit` of a run: applied, ignored or resync (see the module docs), or refused with its error. */
export type EventOutcome = ApplyOutcome | { outcome: 'refused', error: Error }

/** What {@link applyCommitEvents} did with a run of events. */
export interface RunOutcome {
  /** One per event handled, in order; the last may be `resync` or `refused`, which ends the run. */
  outcomes: EventOutcome[]
  /** The applied events reference blobs the repo did not reference before (a fetch pass is due). */
  blobsAdded: boolean
}

/** One event checked and verified on top of the run so far, not yet written. */
interface Verified {
  evt: CommitEvent
  verified: IncrementalVerification
  prevData: CID
}

/**
 * Applies a run of one DID's `#commit` events, in stream order, as one write (see
 * the module docs for what each must pass). Each event is verified on top of the
 * ones before it (their blocks over the stored repo); the run stops at the first
 * event that is neither applied nor ignored, and the caller goes on with the rest.
 * What was verified up to there is written in one staged write and one atomic
 * advance: a burst of events (a replay, a busy account) costs one store round, and
 * a block that one event creates and a later one drops is never written. A failed
 * write throws, and then none of the run was applied.
 */
export async function applyCommitEvents (components: ApplyComponents, events: readonly CommitEvent[], options: ApplyOptions): Promise<RunOutcome> {
  const { store } = components
  const { signal, url } = options
  if (events.length === 0) return { outcomes: [], blobsAdded: false }
  const did = events[0].did
  const state = await store.getState(did)
  const outcomes: EventOutcome[] = []
  const applied: Verified[] = []
  // the blocks of the applied events (each hash-checked by the CAR reader), over the stored ones
  const pending = new MemoryBlockStore({ verified: true })
  const below = new OverlayBlockStore(pending, store.blocks)
  let identity: Identity | undefined
  let data = state?.data
  let rev = state?.rev
  for (const evt of events) {
    if (evt.did !== did) throw new TypeError(`a run of events is one DID's; got ${evt.did} after ${did}`)
    try {
      identity ??= await hostIdentity(components, did, state, options)
      const outcome = await verifyEvent(components, evt, { state, data, rev, identity, below, signal, url })
      if ('outcome' in outcome) {
        outcomes.push(outcome)
        if (outcome.outcome === 'ignored') continue
        break
      }
      applied.push(outcome)
      identity = outcome.identity
      data = outcome.verified.data.toString()
      rev = evt.rev
      for (const block of outcome.blocks) pending.put(block.cid, block.bytes)
      outcomes.push({ outcome: 'applied', state: state as RepoState, blocks: outcome.verified.blocks.length, bytes: evt.blocks.byteLength })
    } catch (err) {
      if (signal?.aborted === true) throw err
      outcomes.push({ outcome: 'refused', error: err as Error })
      break
    }
  }
  if (applied.length === 0 || state === undefined) return { outcomes, blobsAdded: false }
  const { states, blobsAdded } = await writeRun(store, state, applied, below, { signal, url })
  let n = 0
  for (const outcome of outcomes) if (outcome.outcome === 'applied') outcome.state = states[n++]
  return { outcomes, blobsAdded }
}

interface VerifyContext {
  /** The stored state when the run began. */
  state: RepoState | undefined
  /** The data root and rev the run has reached. */
  data: string | undefined
  rev: string | undefined
  identity: Identity
  /** The blocks of the run's applied events over the stored ones. */
  below: OverlayBlockStore
  signal?: AbortSignal
  url: string
}

/** One event checked against where the run stands: an outcome that ends it here, or the verified advance. */
async function verifyEvent (components: ApplyComponents, evt: CommitEvent, ctx: VerifyContext): Promise<ApplyOutcome | (Verified & { identity: Identity, blocks: Block[] })> {
  const { state, signal, url } = ctx
  const did = evt.did
  if (state === undefined || ctx.data === undefined || ctx.rev === undefined) return { outcome: 'resync', why: 'nothing stored yet' }
  if (!holdsBlocks(state)) return { outcome: 'resync', why: `stored status ${(state as RepoState).status}` }
  if (compareRevs(evt.rev, ctx.rev) <= 0) return { outcome: 'ignored', why: `rev ${evt.rev} is not newer than the stored rev ${ctx.rev}` }
  if (evt.tooBig) return { outcome: 'resync', why: 'tooBig' }
  if (evt.prevData === undefined) return { outcome: 'resync', why: 'no prevData (not a sync 1.1 host)' }

  const { blocks, list } = await readEventBlocks(evt.blocks, evt.commit, { did, url, signal })
  const commitBytes = blocks.get(evt.commit)
  if (commitBytes === undefined) throw new CommitInvalidError('the event does not carry its commit block', { did, rev: evt.rev, cid: evt.commit })
  const commit = decodeCommit(commitBytes, evt.commit)
  checkCommitFields(commit, evt.did, evt.rev, evt.commit)
  // (the signature is checked by verifyIncremental below, before anything is written)
  await verifyCommitProof(blocks, commit.data, evt.prevData, evt.ops, { did, rev: evt.rev, signal })
  if (evt.prevData.toString() !== ctx.data) return { outcome: 'resync', why: `prevData ${evt.prevData.toString()} is not the stored data ${ctx.data} (a gap)` }

  // the advance, checked in proportion to the change: the event's blocks over the run's and the stored ones
  const verify = async (key: Identity['signingKey']): Promise<IncrementalVerification> => await verifyIncremental({
    oldData: evt.prevData as CID,
    commit: evt.commit,
    blocks: new OverlayBlockStore(blocks, ctx.below),
    key,
    did,
    trusted: true,
    records: 'hash',
    signal,
    log: repoLog
  })
  let checked: { result: IncrementalVerification, identity: Identity }
  try {
    checked = await withCurrentKey(components, did, ctx.identity, signal, verify)
  } catch (err) {
    if (err instanceof MissingBlockError) return { outcome: 'resync', why: `the new tree needs ${err.cid?.toString() ?? 'a block'} the event does not carry` }
    throw err
  }
  return { evt, verified: checked.result, prevData: evt.prevData, identity: checked.identity, blocks: list }
}

/**
 * Writes a run's verified advances as one: the blocks the last commit's repo holds
 * that the stored one did not, staged and written, then one atomic advance with the
 * summed hold and blob-reference changes. `overlay`: the run's blocks over the
 * stored ones. Returns the state after each event.
 */
async function writeRun (store: MirrorStore, state: RepoState, run: readonly Verified[], overlay: OverlayBlockStore, options: { signal?: AbortSignal, url: string }): Promise<{ states: RepoState[], blobsAdded: boolean }> {
  const { signal, url } = options
  const did = state.did
  const delta = new HoldDelta()
  delta.remove(CID.parse(state.commit))
  let records = state.records
  const states: RepoState[] = []
  // the commits in between are never held: only the last one
  delta.add(run[run.length - 1].evt.commit)
  for (const { evt, verified } of run) {
    delta.addDiff(verified)
    records = records === undefined ? undefined : records + verified.recordDelta
    states.push({
      did,
      commit: evt.commit.toString(),
      rev: evt.rev,
      data: verified.data.toString(),
      pds: state.pds,
      handle: state.handle,
      status: 'active',
      syncedAt: new Date().toISOString(),
      records
    })
  }
  // what the new repo gains; a block an earlier event created and a later one dropped is left out
  const written = new Set<string>()
  const blocks: Block[] = []
  for (const { verified } of run) {
    for (const block of verified.blocks) {
      const key = cidKey(block.cid)
      if (written.has(key) || delta.changeOf(block.cid) <= 0) continue
      written.add(key)
      blocks.push(block)
    }
  }
  const last = states[states.length - 1]
  const lastEvent = run[run.length - 1].evt

  // a steady stream of events must not hold off garbage collection (see beginWrite)
  const release = await store.beginWrite({ yieldToGc: true })
  let committed = false
  try {
    await store.putBlocks(did, blocks, { signal })
    // the blob references of the new commit: the events' changes when the index
    // describes the stored commit, a recount otherwise (as a sync does)
    let blobs: BlobDelta
    if (await store.blobs.describedCommit(did) === state.commit) {
      blobs = new Map()
      for (const { verified, prevData } of run) {
        addBlobDelta(blobs, await blobDelta(overlay, new BlobScan({ remember: false }), prevData, verified.data, { signal, recordOps: verified.recordOps }))
      }
    } else {
      blobs = await blobRecount(store, overlay, did, CID.parse(last.data), { signal })
    }
    signal?.throwIfAborted()
    await store.commitRepo(last, delta, {
      pin: false,
      blobs: async (batch) => await store.blobs.planAdvance(did, blobs, last.commit, batch)
    })
    committed = true
    log('%s: applied %d #commit (seq %d to %d, rev %s; %d blocks written) from %s', did, run.length, run[0].evt.seq, lastEvent.seq, last.rev, blocks.length, url)
    return { states, blobsAdded: [...blobs.values()].some(({ change }) => change > 0) }
  } finally {
    if (!committed) await store.discardStaged(did).catch(err => { log.error('%s: discarding staged blocks failed: %e', did, err) })
    await release()
  }
}

/** Adds `more` to `total` (blob reference changes of successive advances). */
function addBlobDelta (total: BlobDelta, more: BlobDelta): void {
  for (const [cid, { change, size }] of more) {
    const entry = total.get(cid) ?? { change: 0 }
    entry.change += change
    if (size !== undefined) entry.size = size
    total.set(cid, entry)
  }
}

/**
 * Checks a `#sync` (the repo is now at this commit): its commit is signed by the
 * DID's key and newer than the stored one. Returns `resync` (the blocks it lacks
 * are fetched by a sync) or `ignored` for the stored commit; throws for an older
 * rev (a `#sync` back in time is refused) and for anything that does not verify.
 */
export async function checkSyncEvent (components: ApplyComponents, evt: SyncEvent, options: ApplyOptions): Promise<ApplyOutcome> {
  const { store } = components
  const { signal, url } = options
  const did = evt.did
  const state = await store.getState(did)
  const identity = await hostIdentity(components, did, state, options)
  const { blocks, roots } = await readEventBlocks(evt.blocks, undefined, { did, url, signal })
  const root = roots[0]
  const bytes = blocks.get(root)
  if (bytes === undefined) throw new CommitInvalidError('the #sync event does not carry its commit block', { did, rev: evt.rev, cid: root })
  const commit = decodeCommit(bytes, root)
  checkCommitFields(commit, did, evt.rev, root)
  await withCurrentKey(components, did, identity, signal, (key) => { verifyCommitSignature(commit, key, { cid: root }) })
  if (!holdsBlocks(state)) return { outcome: 'resync', why: '#sync' }
  const order = compareRevs(evt.rev, state.rev)
  if (order < 0) throw new FirehoseEventRefusedError(`#sync to rev ${evt.rev}, older than the stored rev ${state.rev}`, { did, url, reason: 'rollback', cid: root })
  if (order === 0) return { outcome: 'ignored', why: `#sync to the stored rev ${evt.rev}` }
  return { outcome: 'resync', why: `#sync to rev ${evt.rev}` }
}

/**
 * The DID's identity, refusing an event a host sent for a DID it does not serve
 * (relays excepted): the host must be the stored PDS or, after one fresh look at
 * the DID document, the PDS it names.
 */
async function hostIdentity (components: ApplyComponents, did: string, state: RepoState | undefined, options: ApplyOptions): Promise<Identity> {
  const { identity: resolver } = components
  const { signal, url, relay } = options
  let identity = await resolver.resolve(did, { signal, verifyHandle: false })
  if (relay) return identity
  const host = hostOrigin(url)
  const serves = (pds: string | undefined): boolean => pds !== undefined && hostOrigin(pds) === host
  if (serves(identity.pds)) return identity
  identity = await resolver.refresh(did, { signal, verifyHandle: false })
  if (serves(identity.pds)) return identity
  throw new FirehoseEventRefusedError(`event for a DID the host does not serve (its PDS is ${identity.pds}${state?.pds !== undefined && state.pds !== identity.pds ? `, stored ${state.pds}` : ''})`, { did, url, reason: 'host' })
}

async function readEventBlocks (bytes: Uint8Array, commit: CID | undefined, options: { did: string, url: string, signal?: AbortSignal }): Promise<{ blocks: MemoryBlockStore, list: Block[], roots: CID[] }> {
  const car = await readCar(bytes, { signal: options.signal })
  if (car.roots.length === 0) throw new CommitInvalidError('the event\'s CAR has no root', { did: options.did })
  if (commit !== undefined && !car.roots[0].equals(commit)) {
    throw new CommitInvalidError(`the event's CAR root ${car.roots[0].toString()} is not its commit`, { did: options.did, cid: commit })
  }
  const blocks = new MemoryBlockStore({ verified: true })
  const list: Block[] = []
  const seen = new Set<string>()
  for await (const block of car.blocks) {
    const key = cidKey(block.cid)
    if (seen.has(key)) continue
    seen.add(key)
    // copies: the views share the frame, which is not kept
    const copy = { cid: block.cid, bytes: block.bytes.slice() }
    blocks.put(copy.cid, copy.bytes)
    list.push(copy)
  }
  return { blocks, list, roots: car.roots }
}

function checkCommitFields (commit: Commit, did: string, rev: string, cid: CID): void {
  if (commit.did !== did) throw new CommitInvalidError(`the commit is for ${commit.did}, not the event's DID`, { did, rev, cid })
  if (commit.rev !== rev) throw new CommitInvalidError(`the commit has rev ${commit.rev}, not the event's rev ${rev}`, { did, rev, cid })
}

/**
 * `check` (a signature check) with the DID's key; when the signature fails, with
 * the key of the DID document looked up again once (keys rotate), unless that key
 * is the same. Returns what `check` gave and the identity whose key passed.
 */
async function withCurrentKey<T> (components: ApplyComponents, did: string, identity: Identity, signal: AbortSignal | undefined, check: (key: Identity['signingKey']) => T | Promise<T>): Promise<{ result: T, identity: Identity }> {
  try {
    return { result: await check(identity.signingKey), identity }
  } catch (err) {
    if (!(err instanceof CommitSignatureError)) throw err
    const fresh = await components.identity.refresh(did, { signal, verifyHandle: false })
    if (fresh.didKey === identity.didKey) throw err
    return { result: await check(fresh.signingKey), identity: fresh }
  }
}
