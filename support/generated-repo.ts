/**
 * Real repositories for tests and benchmarks, made by the reference implementation
 * (@atproto/repo), not with atmirror's own code: the inputs of a test must not come
 * from the engine under test.
 *
 * Everything is deterministic for a given seed: keys come from a hash of the seed,
 * record keys and the rev are TIDs from a fixed clock, record contents from a seeded
 * PRNG, and ECDSA signatures are RFC 6979 deterministic.
 */
import { createHash } from 'node:crypto'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { P256Keypair, Secp256k1Keypair, type Keypair } from '@atproto/crypto'
import { MemoryBlockstore, Repo, WriteOpAction, getFullRepo, type RecordCreateOp } from '@atproto/repo'

export type FixtureKeyType = 'k256' | 'p256'

export interface GenerateRepoOptions {
  /** How many records. */
  records: number
  /** Signing key type. @default 'k256' */
  keyType?: FixtureKeyType
  /** Seeds the key, the DID, record keys and contents. @default 1 */
  seed?: number
}

/** A repo made by @atproto/repo, with what the reference says it contains. */
export interface GeneratedRepo {
  did: string
  keyType: FixtureKeyType
  /** The signing key (tests re-sign tampered commits with it). */
  keypair: Keypair
  /** `did:key:…` of the signing key. */
  didKey: string
  /** The repo as a CAR file (getFullRepo order: commit, then MST nodes and records). */
  car: Uint8Array
  commit: string
  data: string
  rev: string
  /** Every record as @atproto/repo lists it, in MST order. */
  records: Array<{ rpath: string, cid: string }>
}

/** Fixed clock for TIDs: 2024-01-01T00:00:00Z in microseconds. */
const BASE_MICROS = 1_704_067_200_000_000

const S32 = '234567abcdefghijklmnopqrstuvwxyz'

/** A TID (13 chars, base32-sortable) for a timestamp in microseconds and a clock id. */
export function fixtureTid (micros: number, clockId: number): string {
  let value = (BigInt(micros) << 10n) | BigInt(clockId & 1023)
  let out = ''
  for (let i = 0; i < 13; i++) {
    out = S32[Number(value & 31n)] + out
    value >>= 5n
  }
  return out
}

/** A small seeded PRNG (mulberry32): deterministic inputs for tests and benchmarks, not for keys. */
export function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const WORDS = ['mirror', 'repo', 'block', 'peer', 'atproto', 'sky', 'tree', 'hash', 'signed', 'commit', 'record', 'merkle', 'search', 'bluesky', 'node', 'key']

/** A deterministic signing key for `seed`. */
export async function fixtureKeypair (keyType: FixtureKeyType = 'k256', seed = 1): Promise<Keypair> {
  const secret = createHash('sha256').update(`atmirror-fixture-${keyType}-${seed}`).digest()
  return keyType === 'k256'
    ? await Secp256k1Keypair.import(secret, { exportable: true })
    : await P256Keypair.import(secret, { exportable: true })
}

/** A plausible did:plc for `seed` (24 base32 chars). */
export function fixtureDid (seed = 1): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567'
  const digest = createHash('sha256').update(`atmirror-fixture-did-${seed}`).digest()
  let id = ''
  for (let i = 0; i < 24; i++) id += alphabet[digest[i] % 32]
  return `did:plc:${id}`
}

/** The writes for a repo of `count` records: posts, likes, follows and one profile. */
export function fixtureWrites (count: number, did: string, seed = 1): RecordCreateOp[] {
  const random = prng(seed)
  const writes: RecordCreateOp[] = []
  for (let i = 0; i < count; i++) {
    const micros = BASE_MICROS + i * 1_000_003
    const rkey = fixtureTid(micros, seed % 1024)
    const createdAt = new Date(Math.floor(micros / 1000)).toISOString()
    const kind = i === 1 ? 'profile' : random() < 0.6 ? 'post' : random() < 0.75 ? 'like' : 'follow'
    if (kind === 'profile') {
      writes.push({ action: WriteOpAction.Create, collection: 'app.bsky.actor.profile', rkey: 'self', record: { $type: 'app.bsky.actor.profile', displayName: `Fixture ${seed}`, description: 'a repo made for tests' } })
    } else if (kind === 'post') {
      const words = Array.from({ length: 3 + Math.floor(random() * 20) }, () => WORDS[Math.floor(random() * WORDS.length)])
      writes.push({ action: WriteOpAction.Create, collection: 'app.bsky.feed.post', rkey, record: { $type: 'app.bsky.feed.post', text: `${words.join(' ')} #${i}`, langs: ['en'], createdAt } })
    } else if (kind === 'like') {
      writes.push({ action: WriteOpAction.Create, collection: 'app.bsky.feed.like', rkey, record: { $type: 'app.bsky.feed.like', subject: { uri: `at://${fixtureDid(seed + 1)}/app.bsky.feed.post/${fixtureTid(micros - 7_000_000, 3)}`, cid: 'bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm' }, createdAt } })
    } else {
      writes.push({ action: WriteOpAction.Create, collection: 'app.bsky.graph.follow', rkey, record: { $type: 'app.bsky.graph.follow', subject: fixtureDid(seed * 100_000 + i), createdAt } })
    }
  }
  return writes
}

async function concat (chunks: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = []
  for await (const chunk of chunks) parts.push(chunk)
  return Buffer.concat(parts)
}

/** Builds a repo with @atproto/repo and exports it as a CAR. */
export async function generateRepo (options: GenerateRepoOptions): Promise<GeneratedRepo> {
  const keyType = options.keyType ?? 'k256'
  const seed = options.seed ?? 1
  const keypair = await fixtureKeypair(keyType, seed)
  const did = fixtureDid(seed)
  const storage = new MemoryBlockstore()
  const writes = fixtureWrites(options.records, did, seed)
  const rev = fixtureTid(BASE_MICROS + options.records * 1_000_003 + 1, 0)
  const commitData = await Repo.formatInitCommit(storage, did, keypair, writes, rev)
  await storage.applyCommit(commitData)
  const repo = await Repo.load(storage, commitData.cid)
  const leaves = await repo.data.list()
  const car = await concat(getFullRepo(storage, commitData.cid))
  return {
    did,
    keyType,
    keypair,
    didKey: keypair.did(),
    car,
    commit: commitData.cid.toString(),
    data: (await repo.data.getPointer()).toString(),
    rev,
    records: leaves.map(leaf => ({ rpath: leaf.key, cid: leaf.value.toString() }))
  }
}

/**
 * {@link generateRepo}, cached as `<dir>/repo-<keyType>-<records>-<seed>.car` plus a
 * JSON sidecar, so benchmarks do not pay for building the repo on every run.
 */
export async function cachedRepo (options: GenerateRepoOptions & { dir: string }): Promise<GeneratedRepo & { cached: boolean }> {
  const keyType = options.keyType ?? 'k256'
  const seed = options.seed ?? 1
  const base = join(options.dir, `repo-${keyType}-${options.records}-${seed}`)
  try {
    const [car, meta] = await Promise.all([readFile(`${base}.car`), readFile(`${base}.json`, 'utf8')])
    const parsed = JSON.parse(meta) as Omit<GeneratedRepo, 'car' | 'keypair'>
    return { ...parsed, car: new Uint8Array(car.buffer, car.byteOffset, car.byteLength), keypair: await fixtureKeypair(keyType, seed), cached: true }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const repo = await generateRepo({ ...options, keyType, seed })
  await mkdir(options.dir, { recursive: true })
  const { car, keypair, ...meta } = repo
  // write-then-rename so a concurrent or interrupted run never reads half a file
  await writeFile(`${base}.car.tmp`, car)
  await writeFile(`${base}.json.tmp`, JSON.stringify(meta))
  await rename(`${base}.car.tmp`, `${base}.car`)
  await rename(`${base}.json.tmp`, `${base}.json`)
  return { ...repo, cached: false }
}
