/**
 * The node's libp2p identity: an Ed25519 key kept in `<dir>/peer.key` (protobuf
 * encoding, the one libp2p uses everywhere; mode 0600). A plain file rather than the
 * Helia keychain because its password would have to live next to it anyway, and an
 * operator can back it up, move it to a new host, or delete it to rotate the PeerID.
 *
 * Callers hold the data-directory lock, so creation does not race other processes;
 * the file is still written to a temp name and renamed so a crash never leaves a
 * truncated key.
 */
import { chmod, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { logger } from '@libp2p/logger'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { MirrorError } from '../errors.ts'
import type { PrivateKey } from '@libp2p/interface'

const log = logger('atmirror:net')

/** Where the key lives in a data directory. */
export function peerKeyPath (dir: string): string {
  return join(dir, 'peer.key')
}

/** Loads the node's key from the data directory, creating it on first use. */
export async function loadOrCreatePeerKey (dir: string): Promise<PrivateKey> {
  const path = peerKeyPath(dir)
  let bytes: Uint8Array | undefined
  try {
    bytes = await readFile(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (bytes !== undefined) {
    let key: PrivateKey
    try {
      key = privateKeyFromProtobuf(bytes)
    } catch (err) {
      throw new MirrorError('peer key file is corrupt; move it away to get a new PeerID', { path }, { cause: err })
    }
    const info = await stat(path)
    if ((info.mode & 0o077) !== 0) {
      log.error('peer key %s was readable by others (mode %s); tightening to 0600', path, (info.mode & 0o777).toString(8))
      await chmod(path, 0o600)
    }
    return key
  }
  const key = await generateKeyPair('Ed25519')
  const tmp = `${path}.${process.pid}.tmp`
  await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600 })
  try {
    await rename(tmp, path)
  } catch (err) {
    await unlink(tmp).catch(() => {})
    throw err
  }
  log('created peer key %s for %p', path, peerIdFromPrivateKey(key))
  return key
}
