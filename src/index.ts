/**
 * @packageDocumentation
 *
 * atmirror keeps verified copies of AT Protocol (Bluesky) repositories and serves
 * them peer to peer over libp2p/IPFS. A node pins repos by DID or handle, mirrors
 * them from their PDS (or from other mirrors), verifies every commit signature and
 * every block, keeps them current, and answers Bitswap for their blocks.
 *
 * @example Run a node, pin a repo, react to syncs
 *
 * ```ts
 * import { createMirrorNode } from 'atmirror'
 *
 * const node = await createMirrorNode({
 *   dataDir: '/var/lib/atmirror',
 *   network: { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'] },
 *   api: { port: 0 }
 * })
 * node.events.addEventListener('repo:synced', (evt) => {
 *   console.info('%s is at rev %s', evt.detail.did, evt.detail.rev)
 * })
 * await node.start()
 *
 * const { did, sync } = await node.pin('alice.example.com')
 * console.info('mirrored %s: %d records', did, sync.records)
 *
 * await node.stop()
 * ```
 */
export { createMirrorNode, MirrorNode, VERSION, type MirrorNodeInit, type MirrorNodeEvents } from './node.ts'
export type { NetworkInit } from './net/network.ts'
export type { NetworkMode } from './net/addresses.ts'
export type { MirrorApi, MirrorApiOptions, MirrorSyncOptions, GetBlockOptions, NodeStatus, PinnedRepo, PinResult, UnpinResult, PeersResult, MirrorsResult } from './mirror/api.ts'
export type { SyncResultJson, PinResultJson } from './server/control-api.ts'
export { ControlClient, type ControlClientInit } from './server/control-client.ts'
export { DataDirLock, acquireDataDirLock } from './mirror/lock.ts'
export * from './errors.ts'

// The repo engine (pure: bytes in, verdicts out)
export { verifyRepoCar, verifyRepo, type RepoSummary, type RepoCarSummary } from './repo/verify.ts'
export { verifyIncremental, type IncrementalVerification, type VerifyIncrementalInput } from './repo/verify-incremental.ts'
export { readCar, writeCar, type CarReader } from './repo/car.ts'
export { decodeCommit, verifyCommitSignature, type Commit } from './repo/commit.ts'
export { parseDidKey, parsePublicKeyMultibase, formatDidKey, verifySignature, type PublicKey, type KeyType } from './repo/keys.ts'
export { walkMst, diffMst, buildMst, verifyCommitProof, keyHeight } from './repo/mst/index.ts'
export { MemoryBlockStore, type ReadonlyBlockStore, type BlockStore, type Block } from './repo/block-store.ts'

// Identity and heads
export { AtprotoIdentityResolver, type Identity, type IdentityResolver } from './identity/index.ts'
export { peerIdForKey, peerIdForDid } from './identity/peer-id.ts'
export { rendezvousCid } from './identity/rendezvous.ts'
export { PdsHeadResolver, CompositeHeadResolver, type Head, type HeadResolver } from './head/index.ts'

// Storage and sync
export { MirrorStore, type RepoState } from './mirror/store.ts'
export { RepoSyncer, type SyncResult, type SyncProgress } from './mirror/sync.ts'
export { exportStoredRepo } from './mirror/export.ts'
