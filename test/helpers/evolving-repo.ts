/**
 * Repos that change over time, made by the reference implementation
 * (@atproto/repo), for store, GC and export tests: each version comes with its
 * commit, MST root, CAR and blocks.
 */
import type { Keypair } from '@atproto/crypto'
import { MemoryBlockstore, Repo, WriteOpAction, getFullRepo, type RecordCreateOp, type RecordWriteOp } from '@atproto/repo'
import { CID } from 'multiformats/cid'
import type { Block } from '../../src/repo/block-store.ts'
import { parseDidKey, type PublicKey } from '../../src/repo/keys.ts'
import { fixtureDid, fixtureKeypair, fixtureTid } from '../../support/generated-repo.ts'
import { splitCar } from './car-tools.ts'

export interface RepoVersion {
  did: string
  commit: CID
  data: CID
  rev: string
  car: Uint8Array
  /** Every block of this version (commit, nodes, records), each once. */
  blocks: Block[]
}

export interface TestRecordValue {
  /** An NSID (`app.bsky.feed.post`). */
  collection: `${string}.${string}.${string}`
  rkey: string
  record: Record<string, unknown>
}

async function concat (chunks: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = []
  for await (const chunk of chunks) parts.push(chunk)
  return new Uint8Array(Buffer.concat(parts))
}

/** A post record with some text. */
export function post (rkey: string, text: string): TestRecordValue {
  return { collection: 'app.bsky.feed.post', rkey, record: { $type: 'app.bsky.feed.post', text, createdAt: '2024-01-01T00:00:00.000Z' } }
}

/** `n` posts with rkeys from a fixed clock, texts from `prefix`. */
export function posts (n: number, prefix = 'post', start = 0): TestRecordValue[] {
  return Array.from({ length: n }, (_, i) => post(fixtureTid(1_704_067_200_000_000 + (start + i) * 1_000_003, 7), `${prefix} ${start + i}`))
}

export class EvolvingRepo {
  readonly did: string
  /** Signs every later commit; {@link rotateKey} replaces it. */
  keypair: Keypair
  key: PublicKey
  readonly #storage: MemoryBlockstore
  #repo: Repo

  private constructor (did: string, keypair: Keypair, storage: MemoryBlockstore, repo: Repo) {
    this.did = did
    this.keypair = keypair
    this.key = parseDidKey(keypair.did())
    this.#storage = storage
    this.#repo = repo
  }

  /** A new repo for `seed` holding `records`; `keySeed` signs with another key than the seed's. */
  static async create (seed: number, records: TestRecordValue[], init: { keySeed?: number } = {}): Promise<EvolvingRepo> {
    const keypair = await fixtureKeypair('k256', init.keySeed ?? seed)
    const did = fixtureDid(seed)
    const storage = new MemoryBlockstore()
    const repo = await Repo.create(storage, did, keypair, records.map((r): RecordCreateOp => ({ action: WriteOpAction.Create, collection: r.collection, rkey: r.rkey, record: r.record as RecordCreateOp['record'] })))
    return new EvolvingRepo(did, keypair, storage, repo)
  }

  /** Signs later commits with the fixture key of `keySeed` (a key rotation). */
  async rotateKey (keySeed: number): Promise<void> {
    this.keypair = await fixtureKeypair('k256', keySeed)
    this.key = parseDidKey(this.keypair.did())
  }

  /** Applies writes as one commit. */
  async write (ops: Array<{ action: 'create' | 'update', value: TestRecordValue } | { action: 'delete', collection: TestRecordValue['collection'], rkey: string }>): Promise<RepoVersion> {
    const writes = ops.map((op): RecordWriteOp => op.action === 'delete'
      ? { action: WriteOpAction.Delete, collection: op.collection, rkey: op.rkey }
      : op.action === 'create'
        ? { action: WriteOpAction.Create, collection: op.value.collection, rkey: op.value.rkey, record: op.value.record as RecordCreateOp['record'] }
        : { action: WriteOpAction.Update, collection: op.value.collection, rkey: op.value.rkey, record: op.value.record as RecordCreateOp['record'] })
    this.#repo = await this.#repo.applyWrites(writes, this.keypair)
    return await this.version()
  }

  /** The current version. */
  async version (): Promise<RepoVersion> {
    const car = await concat(getFullRepo(this.#storage, this.#repo.cid))
    const { blocks } = splitCar(car)
    const seen = new Set<string>()
    const unique = blocks.filter(b => {
      const key = b.cid.toString()
      if (seen.has(key)) return false
      seen.add(key)
      return true
    })
    return {
      did: this.did,
      commit: CID.parse(this.#repo.cid.toString()),
      data: CID.parse((await this.#repo.data.getPointer()).toString()),
      rev: this.#repo.commit.rev,
      car,
      blocks: unique
    }
  }
}
