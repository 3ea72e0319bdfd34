/**
 * Sync 1.1 commit validation by MST operation inversion ("inductive firehose"):
 * a `#commit` event carries the new tree's changed and neighbouring nodes, the
 * record ops and `prevData`. Undoing every op on that partial new tree must give
 * back exactly `prevData`; if an op is left out, invented or mis-stated, the root
 * differs, and if the event lacks a block the inversion needs it cannot be done.
 */
import type { CID } from 'multiformats/cid'
import { CommitProofError, InvalidRecordPathError, MissingBlockError } from '../../errors.ts'
import type { ReadonlyBlockStore } from '../block-store.ts'
import { cidKey } from '../cid.ts'
import { mstKeyProblem } from './key.ts'
import { MstEditor } from './mutate.ts'

/** A record operation of a commit, as a `#commit` event lists it. */
export interface CommitOp {
  action: 'create' | 'update' | 'delete'
  /** The record path `collection/rkey`. */
  path: string
  /** The record's new CID (`null` for a delete). */
  cid: CID | null
  /** The record's previous CID (for updates and deletes; absent or `null` for creates). */
  prev?: CID | null
}

export interface CommitProofOptions {
  signal?: AbortSignal
  /** Named in errors. */
  did?: string
  /** Named in errors. */
  rev?: string
}

/** The outcome of inverting ops on a tree. */
export interface InvertedOps {
  /** The root after undoing every op (equals `prevData` for a valid commit). */
  root: CID
  /** The nodes the inversion read: the blocks a proof must carry. */
  loaded: CID[]
}

/**
 * Checks ops for shape and puts them in the order inversion uses: deletes first,
 * then by path (the order of the Go reference). Throws {@link CommitProofError}
 * for a malformed op or a path listed twice.
 */
export function normalizeCommitOps (ops: readonly CommitOp[], options: CommitProofOptions = {}): CommitOp[] {
  const paths = new Set<string>()
  for (const op of ops) {
    const fail = (reason: string): CommitProofError => new CommitProofError(reason, { did: options.did, rev: options.rev, rpath: op.path })
    const problem = mstKeyProblem(op.path)
    if (problem !== undefined) throw new CommitProofError(`op path invalid (${problem})`, { did: options.did, rev: options.rev, rpath: op.path }, { cause: new InvalidRecordPathError(op.path, problem) })
    if (paths.has(op.path)) throw fail('path appears in more than one op')
    paths.add(op.path)
    const prev = op.prev ?? null
    if (op.action === 'create') {
      if (op.cid === null) throw fail('create op without a cid')
      if (prev !== null) throw fail('create op with a prev')
    } else if (op.action === 'update') {
      if (op.cid === null || prev === null) throw fail('update op needs both cid and prev')
      if (op.cid.equals(prev)) throw fail('update op does not change the record')
    } else if (op.action === 'delete') {
      if (op.cid !== null) throw fail('delete op with a cid')
      if (prev === null) throw fail('delete op without a prev')
    } else {
      throw fail(`unknown op action ${JSON.stringify(op.action)}`)
    }
  }
  return [...ops].sort((a, b) => {
    const ad = a.action === 'delete' ? 0 : 1
    const bd = b.action === 'delete' ? 0 : 1
    if (ad !== bd) return ad - bd
    return a.path < b.path ? -1 : a.path > b.path ? 1 : 0
  })
}

/**
 * Undoes `ops`, in the order given, on the tree at `data` held (partly) in
 * `store`: a create becomes a delete that must remove exactly `cid`, an update
 * puts back `prev` over exactly `cid`, a delete puts back `prev` where nothing
 * was. Throws {@link CommitProofError} when an op does not match the tree or a
 * block the inversion needs is absent (the cause is the MissingBlockError);
 * a loaded node breaking the structure rules throws MstInvalidError.
 */
export async function invertCommitOps (store: ReadonlyBlockStore, data: CID, ops: readonly CommitOp[], options: CommitProofOptions = {}): Promise<InvertedOps> {
  const { did, rev, signal } = options
  const editor = new MstEditor(store)
  let root = data
  for (const op of ops) {
    signal?.throwIfAborted()
    const fail = (reason: string): CommitProofError => new CommitProofError(reason, { did, rev, rpath: op.path })
    try {
      if (op.action === 'create') {
        const result = await editor.delete(root, op.path, { signal })
        if (result.prev === null) throw fail('created record is not in the new tree')
        if (op.cid === null || !result.prev.equals(op.cid)) throw fail(`created record has CID ${result.prev.toString()} in the new tree, not ${String(op.cid)}`)
        root = result.root
      } else {
        const prev = op.prev ?? null
        if (prev === null) throw fail(`${op.action} op without a prev`)
        const result = await editor.put(root, op.path, prev, { signal })
        if (op.action === 'update') {
          if (result.prev === null) throw fail('updated record is not in the new tree')
          if (op.cid === null || !result.prev.equals(op.cid)) throw fail(`updated record has CID ${result.prev.toString()} in the new tree, not ${String(op.cid)}`)
        } else if (result.prev !== null) {
          throw fail('deleted record is still in the new tree')
        }
        root = result.root
      }
    } catch (err) {
      if (err instanceof MissingBlockError) {
        throw new CommitProofError('a block needed to invert the ops is missing', { did, rev, rpath: op.path, cid: err.cid }, { cause: err })
      }
      throw err
    }
  }
  return { root, loaded: editor.loaded }
}

/**
 * Validates a sync 1.1 commit: the ops, undone on the new tree `data` (whose
 * blocks `store` holds, typically only the event's blocks), must give exactly
 * `prevData`. Resolves when the proof holds; throws {@link CommitProofError}
 * otherwise (MstInvalidError for a malformed node).
 *
 * Which blocks an inversion reads depends on the order the ops are undone in,
 * while the resulting root does not. Producers differ (the Go reference undoes
 * deletes first, then by path; the mst-test-suite's minimal proofs undo in
 * reverse path order), so when a block is missing in the first order the
 * second is tried before giving up: any order that completes proves the same.
 */
export async function verifyCommitProof (store: ReadonlyBlockStore, data: CID, prevData: CID, ops: readonly CommitOp[], options: CommitProofOptions = {}): Promise<void> {
  const ordered = normalizeCommitOps(ops, options)
  let root: CID
  try {
    root = (await invertCommitOps(store, data, ordered, options)).root
  } catch (err) {
    if (!(err instanceof CommitProofError) || !(err.cause instanceof MissingBlockError) || ordered.length < 2) throw err
    const reversed = [...ordered].sort((a, b) => a.path < b.path ? 1 : a.path > b.path ? -1 : 0)
    try {
      root = (await invertCommitOps(store, data, reversed, options)).root
    } catch (again) {
      if (again instanceof CommitProofError && again.cause instanceof MissingBlockError) throw err
      throw again
    }
  }
  if (cidKey(root) !== cidKey(prevData) || root.code !== prevData.code) {
    throw new CommitProofError(`ops do not invert to prevData ${prevData.toString()} (got ${root.toString()})`, { did: options.did, rev: options.rev, cid: data })
  }
}
