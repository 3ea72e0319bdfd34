/**
 * Blocks for tests: a DAG-CBOR block from a value, and a look at what a data
 * directory's blockstore holds on disk.
 */
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { base32upper } from 'multiformats/bases/base32'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import type { Block } from '../../src/repo/block-store.ts'
import { encodeCbor } from '../../src/repo/cbor.ts'
import { cidForBytes, sha256 } from '../../src/repo/cid.ts'

/** A DAG-CBOR block for a value. */
export function block (value: unknown): Block {
  const bytes = encodeCbor(value)
  return { cid: cidForBytes(bytes), bytes }
}

/** Multihashes (hex) of every block file under `<dataDir>/blocks`, sorted. */
export async function storedBlocks (dataDir: string): Promise<string[]> {
  const out: string[] = []
  const base = join(dataDir, 'blocks')
  for (const shard of await readdir(base)) {
    if (shard.startsWith('.')) continue
    for (const file of await readdir(join(base, shard))) {
      if (!file.endsWith('.data')) continue
      out.push(Buffer.from(base32upper.decode(file.slice(0, -'.data'.length))).toString('hex'))
    }
  }
  return out.sort()
}

/** The multihash (hex) of a CID, as {@link storedBlocks} lists it. */
export function hexOf (cid: CID): string {
  return Buffer.from(cid.multihash.bytes).toString('hex')
}

/** Checks that every block file hashes to its name; returns how many were checked. */
export async function checkEveryStoredBlock (dataDir: string, read: (cid: CID) => Uint8Array | undefined): Promise<number> {
  let n = 0
  for (const hex of await storedBlocks(dataDir)) {
    const cid = CID.createV1(0x71, Digest.decode(Uint8Array.from(Buffer.from(hex, 'hex'))))
    const bytes = read(cid)
    if (bytes === undefined) throw new Error(`block ${cid.toString()} vanished`)
    const digest = Buffer.from(sha256(bytes)).toString('hex')
    if (`1220${digest}` !== hex) throw new Error(`block file ${cid.toString()} is corrupt`)
    n++
  }
  return n
}
