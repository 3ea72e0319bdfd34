/**
 * The stored blocks a reading verb (export, records) walks, wherever they can be
 * read from: the node opened here (no daemon), the block files next to a running
 * daemon (`fs` kind: a file is complete or absent), or the daemon itself (`level`
 * kind: its LevelDB is open in the daemon alone), one `getBlock` per block, from its
 * store alone (`local`): a block it no longer holds is reported missing, never
 * fetched.
 */
import { join } from 'node:path'
import { BlockFetchError, DaemonError } from '../../src/errors.ts'
import { readBlockFile } from '../../src/mirror/block-file.ts'
import { readBlockstoreKind } from '../../src/mirror/blockstore.ts'
import type { ReadonlyBlockStore } from '../../src/repo/block-store.ts'
import type { Backend } from './backend.ts'

export function storedBlocks (backend: Backend, signal: AbortSignal): ReadonlyBlockStore {
  if (backend.node !== undefined) return backend.node.store.blocks
  if (readBlockstoreKind(backend.dir) !== 'level') {
    const location = join(backend.dir, 'blocks')
    return { get: (cid) => readBlockFile(location, cid), has: (cid) => readBlockFile(location, cid) !== undefined }
  }
  const { api } = backend
  const get = async (cid: Parameters<ReadonlyBlockStore['get']>[0]): Promise<Uint8Array | undefined> => {
    try {
      return await api.getBlock(cid, { local: true, signal })
    } catch (err) {
      // the daemon's answer keeps the error's name: not stored there is missing
      if (err instanceof BlockFetchError || (err instanceof DaemonError && err.name === 'BlockNotFoundError')) return undefined
      throw err
    }
  }
  return { get, has: async (cid) => (await get(cid)) !== undefined }
}
