/**
 * A DAG posing as an MST, for the "node reached twice" tests of every tree reader:
 * each node links the node below it three times (left, and the right of both its
 * entries), `depth` nodes deep, so a reader that does not notice the repeats walks
 * 3^depth paths. The blocks are written with @ipld/dag-cbor directly (valid node
 * schema, canonical prefix compression), not with the engine under test. Every key
 * above the bottom has height 1, so the top node passes a checked reader's own
 * rules for a root and the repeat is what fails. A commit (unsigned, zero
 * signature) points at the top so repo-level readers can take it.
 */
import { createHash } from 'node:crypto'
import * as dagCbor from '@ipld/dag-cbor'
import { cidForBytes, type CID } from '../../src/repo/cid.ts'

export interface HostileRepo {
  did: string
  commit: CID
  /** The MST root. */
  data: CID
  /** Every distinct block: the commit, `depth` nodes, the records. */
  blocks: Array<{ cid: CID, bytes: Uint8Array }>
  /** The top node's child, which the top links three times: the first node reached twice. */
  shared: CID
}

const DID = 'did:plc:hostilehostilehostileho'

function put (blocks: HostileRepo['blocks'], value: unknown): CID {
  const bytes = dagCbor.encode(value)
  const cid = cidForBytes(bytes)
  blocks.push({ cid, bytes })
  return cid
}

/** A node of the given keys (sorted), each with `right` as its right subtree. */
function node (blocks: HostileRepo['blocks'], left: CID | null, keys: string[], value: CID, right: CID | null): CID {
  const utf8 = new TextEncoder()
  let previous = ''
  const e = keys.map(key => {
    let p = 0
    while (p < key.length && p < previous.length && key[p] === previous[p]) p++
    previous = key
    return { k: utf8.encode(key.slice(p)), p, t: right, v: value }
  })
  return put(blocks, { e, l: left })
}

/** Whether `key` has MST height 1: its SHA-256 starts with exactly one zero 2-bit pair. */
function heightOne (key: string): boolean {
  const first = createHash('sha256').update(key).digest()[0]
  return (first & 0xc0) === 0 && (first & 0x30) !== 0
}

/** Whether `key` has MST height 0: its SHA-256 does not start with a zero 2-bit pair. */
function heightZero (key: string): boolean {
  return (createHash('sha256').update(key).digest()[0] & 0xc0) !== 0
}

/** Two keys of height 1 starting with `prefix`, in order. */
function twoKeys (prefix: string): string[] {
  const found: string[] = []
  for (let n = 0; found.length < 2; n++) {
    const key = `${prefix}${n.toString().padStart(4, '0')}`
    if (heightOne(key)) found.push(key)
  }
  return found
}

export function hostileRepo (depth: number): HostileRepo {
  const blocks: HostileRepo['blocks'] = []
  const record = put(blocks, { $type: 'app.bsky.feed.post', text: 'shared', createdAt: '2024-01-01T00:00:00.000Z' })
  const bottom = node(blocks, null, ['app.bsky.feed.post/aaaa'], record, null)
  let top = bottom
  let shared = bottom
  for (let i = 1; i < depth; i++) {
    shared = top
    const tag = i.toString().padStart(3, '0')
    top = node(blocks, top, twoKeys(`app.bsky.feed.post/b${tag}-`), record, top)
  }
  const commit = put(blocks, { did: DID, version: 3, data: top, rev: '3l3qo2vutsw2b', prev: null, sig: new Uint8Array(64) })
  return { did: DID, commit, data: top, blocks, shared }
}

/**
 * The smallest tree with a node linked twice that passes every check at the
 * node's first place: a root with one height-1 key whose left and right subtree
 * are the same leaf node, holding one height-0 key below the root's. Only the
 * second place (keys after the root's) is wrong for it.
 */
export function linkedTwice (): { blocks: Array<{ cid: CID, bytes: Uint8Array }>, root: CID, shared: CID } {
  const blocks: HostileRepo['blocks'] = []
  const record = put(blocks, { $type: 'app.bsky.feed.post', text: 'twice', createdAt: '2024-01-01T00:00:00.000Z' })
  const [top] = twoKeys('app.bsky.feed.post/m')
  let low = ''
  for (let n = 0; low === ''; n++) {
    const key = `app.bsky.feed.post/a${n.toString().padStart(4, '0')}`
    if (heightZero(key)) low = key
  }
  const shared = node(blocks, null, [low], record, null)
  const root = node(blocks, shared, [top], record, shared)
  return { blocks, root, shared }
}
