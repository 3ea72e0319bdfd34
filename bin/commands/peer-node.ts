/**
 * `--peer` for one-shot commands that keep nothing (`resolve`, `head`): a temporary
 * private-mode node in a temporary data directory, connected to the given peers
 * first, so the DID's log and head can come from them when the PLC directory or the
 * PDS is down. Removed when the command ends.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { MirrorNode } from '../../src/node.ts'
import type { IdentityConfig } from './node-options.ts'

/** Runs `fn` with a started temporary node asking `peers`; stops it and removes its directory after. */
export async function withPeerNode<T> (peers: string[], identity: IdentityConfig, fn: (node: MirrorNode) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'atmirror-peer-'))
  let node: MirrorNode | undefined
  try {
    // loaded only with --peer: without it `resolve` and `head` need none of the node
    const { createMirrorNode } = await import('../../src/node.ts')
    node = await createMirrorNode({
      dataDir: dir,
      ...identity,
      network: { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: peers, mirrors: { peers }, services: { reprovide: false } },
      api: false,
      checkOnStart: false,
      intervalMs: 0
    })
    await node.start()
    return await fn(node)
  } finally {
    await node?.stop()
    await rm(dir, { recursive: true, force: true })
  }
}
