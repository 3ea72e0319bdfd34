/**
 * `atmirror block get <cid> [--offline] [--did DID]`: a block's raw bytes on stdout.
 *
 * The local store is read straight from its block files (no lock needed, so this
 * works next to a running daemon). Without `--offline`, a block that is not stored
 * goes through the fetch chain; a bare CID names no repo, so the PDS can only be
 * asked with `--did`, and bitswap needs the peer-to-peer network, which one-shot
 * commands do not start. Fetched blocks are printed, not stored: the mirror only
 * keeps blocks some pinned repo holds.
 */
import { join } from 'node:path'
import { AllSourcesFailedError, BlockNotFoundError } from '../../src/errors.ts'
import { BlockFetcher } from '../../src/blocks/fetcher.ts'
import { LocalBroker } from '../../src/blocks/local.ts'
import { PdsBroker } from '../../src/blocks/pds.ts'
import type { BlockBroker } from '../../src/blocks/broker.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { MirrorBlockstore } from '../../src/mirror/blockstore.ts'
import { parseCid, verifyBlock } from '../../src/repo/cid.ts'
import { CommandUsageError, dataDir, defineCommand, globalOptions } from './context.ts'
import { identityConfig, identityOptions } from './node-options.ts'

const USAGE = `usage: atmirror block get CID [--offline] [--did DID] [options]

Prints a block's raw bytes to stdout (hash-checked against the CID first).

  --offline               only the local store; never touches the network
  --did DID               the repo the block belongs to: lets the fetch chain ask
                          that DID's PDS when the block is not stored here

Without --offline and without --did, only the local store can be asked: a bare CID
names no PDS, and bitswap needs the peer-to-peer network of a running node.
Fetched blocks are printed, not stored.

options:
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --plc URL               PLC directory, with --did (ATMIRROR_PLC)
  --handle-resolver URL   handle resolution service (ATMIRROR_HANDLE_RESOLVER)`

const options = {
  ...globalOptions,
  ...identityOptions,
  offline: { type: 'boolean', default: false },
  did: { type: 'string' }
} as const

export const command = defineCommand({
  usage: USAGE,
  options,
  async run ({ values, positionals }, ctx) {
    const [verb, text, ...rest] = positionals
    if (verb !== 'get') throw new CommandUsageError(`${verb === undefined ? 'missing subcommand' : `unknown subcommand ${JSON.stringify(verb)}`} (get)\n${USAGE}`)
    if (text === undefined || rest.length > 0) throw new CommandUsageError(`block get takes one CID\n${USAGE}`)
    if (values.offline && values.did !== undefined) throw new CommandUsageError('--did asks the PDS, --offline forbids it: pick one')
    const cid = parseCid(text)
    const blockstore = new MirrorBlockstore(join(dataDir(values.data, ctx.env), 'blocks')) // read only: never opened
    const local = blockstore.getBytesSync(cid)
    if (local !== undefined) {
      verifyBlock(cid, local)
      ctx.stdout.write(local)
      return 0
    }
    if (values.offline) throw new BlockNotFoundError(cid, { source: 'local' })

    const brokers: BlockBroker[] = [new LocalBroker({ store: { getBlock: async (c) => await blockstore.getBytes(c) } })]
    if (values.did !== undefined) {
      const identity = new AtprotoIdentityResolver(identityConfig(values, ctx.env))
      brokers.push(new PdsBroker({ identity }))
    } else {
      ctx.stderr.write('note: not stored here; without --did only the local store can be asked (bitswap needs a running node)\n')
    }
    const fetcher = new BlockFetcher({ brokers })
    try {
      const [block] = await fetcher.fetchAll([cid], { did: values.did, store: false, signal: ctx.signal })
      ctx.stdout.write(block.bytes)
      return 0
    } catch (err) {
      if (err instanceof AllSourcesFailedError && values.did === undefined) throw new BlockNotFoundError(cid, { source: 'local' })
      throw err
    }
  }
})
