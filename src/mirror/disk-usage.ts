/**
 * Bytes on disk, as `du` counts them: allocated blocks (`st_blocks` × 512), not
 * file sizes, so a 200-byte file in a 4 KiB filesystem block counts 4 KiB. For a
 * data directory as a whole and per stored repo (`atmirror du`).
 */
import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { CID } from 'multiformats/cid'
import type { BlockstoreKind } from './blockstore.ts'
import { cidOfBlockKey, repoBlocksDelta } from './gc.ts'
import { holdsBlocks } from './status-policy.ts'
import type { MirrorStore } from './store.ts'

/** Allocated bytes of a file, or of a directory and everything under it (0 when absent). */
export async function allocatedBytes (path: string): Promise<number> {
  let stats
  try {
    stats = await lstat(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0
    throw err
  }
  let total = stats.blocks * 512
  if (!stats.isDirectory()) return total
  let names: string[]
  try {
    names = await readdir(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return total
    throw err
  }
  for (const name of names) total += await allocatedBytes(join(path, name))
  return total
}

/** One stored repo's blocks. */
export interface RepoBlockUsage {
  did: string
  /** Distinct blocks of the stored repo (commit, MST nodes, records). */
  blocks: number
  /** Their bytes as blocks (a block shared with another repo counts in both). */
  bytes: number
  /** Their share of the blockstore's disk: `bytes` × the store's bytes on disk per block byte. */
  disk: number
  /** Blobs its records reference that are stored here (a blob two repos reference counts in both). */
  blobs: number
  /** Their bytes. */
  blobBytes: number
}

/** What a data directory takes on disk. */
export interface StoreDiskUsage {
  kind: BlockstoreKind
  /** Allocated bytes of the whole data directory. */
  total: number
  /**
   * Bytes on disk of the blocks. fs: the block files, allocated. level: LevelDB's
   * estimate for the block range in its table files; blocks written since its last
   * flush sit in its log and count under `other` until then.
   */
  blocks: number
  /** Bytes of every stored block, as blocks. */
  blockBytes: number
  /** Allocated bytes of the blob files (`blobs/`: blobs over 64 KiB; smaller ones are blocks). */
  blobFiles: number
  /** Everything else: the datastore's state and index, keys, the lock (`total − blocks − blobFiles`). */
  other: number
  /** Per stored repo that holds blocks. */
  repos: RepoBlockUsage[]
}

/**
 * Bytes on disk of a data directory, and per stored repo. Counts the bytes of
 * every stored block (the blockstore's `usage`, for its bytes on disk per block
 * byte) and walks each stored repo's tree (commit and nodes; records only by CID),
 * so it costs about a verification's reads.
 * Blobs: the files under `blobs/` (those over 64 KiB; smaller ones are blocks and
 * count with them), and per repo the blobs it references that are stored, from the
 * sizes the blob index recorded (blob-store.ts).
 */
export async function storeDiskUsage (store: MirrorStore, options: { signal?: AbortSignal } = {}): Promise<StoreDiskUsage> {
  const { bytes: blockBytes } = await store.blockstore.usage(options)
  const blocks = await store.blockstore.diskUsage()
  const total = await allocatedBytes(store.dir)
  const perByte = blockBytes === 0 ? 0 : blocks / blockBytes
  const repos: RepoBlockUsage[] = []
  for (const state of await store.listStates()) {
    if (!holdsBlocks(state)) continue
    const held = await repoBlocksDelta(store.blocks, CID.parse(state.commit), options)
    let count = 0
    let bytes = 0
    for (const [block] of held.entries()) {
      const found = store.blockstore.getBytesSync(cidOfBlockKey(block))
      count++
      bytes += found?.byteLength ?? 0
    }
    const blobs = await store.blobs.usage(state.did)
    repos.push({ did: state.did, blocks: count, bytes, disk: Math.round(bytes * perByte), blobs: blobs.stored, blobBytes: blobs.bytes })
  }
  const blobFiles = await allocatedBytes(store.blobs.dir)
  return { kind: store.blockstore.kind, total, blocks, blockBytes, blobFiles, other: Math.max(0, total - blocks - blobFiles), repos }
}
