/**
 * Where a verb's work happens, decided in this one place: the daemon running on the
 * data directory (through its control API), or, when none runs, a node opened here
 * on the data directory (taking its lock; no control API, no scheduler, and no
 * peer-to-peer network unless the verb asks for one; `plc` and `handle-resolver`
 * from the flags, the environment or `<data>/config.json`, as the daemon takes
 * them). Both are a {@link MirrorApi}
 * with the same operations, types and errors, so a verb behaves the same either way.
 */
import type { MirrorApi } from '../../src/mirror/api.ts'
import type { MirrorNode, MirrorNodeInit } from '../../src/node.ts'
import { ControlClient } from '../../src/server/control-client.ts'
import type { DaemonInfo } from '../../src/server/daemon-info.ts'
import { applySettings, configPath, readConfig } from './config.ts'
import { dataDir, type CommandContext } from './context.ts'
import { daemonOptions } from './daemon-options.ts'
import { blockstoreFlag, identityConfig } from './node-options.ts'
import { readBlockstoreKind } from '../../src/mirror/blockstore.ts'
import { BlockstoreKindError } from '../../src/errors.ts'

export interface Backend {
  api: MirrorApi
  /** The data directory. */
  dir: string
  /** The running daemon, when the work goes through it. */
  daemon?: DaemonInfo
  /** The node opened here, when no daemon runs. */
  node?: MirrorNode
  /** Stops the node opened here (closing the store, releasing the lock). */
  close: () => Promise<void>
}

export interface OpenBackendInit {
  /**
   * Flags of this verb that a running daemon cannot take (it uses its own
   * configuration); those given are named in a warning. `--plc` and
   * `--handle-resolver` always are.
   */
  daemonIgnores?: string[]
  /** How to open the node here: overrides of the one-shot defaults (no network, no API). */
  local?: Partial<MirrorNodeInit>
  /** Start the node opened here (its network). @default false */
  start?: boolean
  /** Only a running daemon will do (status, peers): ControlApiError when none runs. */
  daemonOnly?: boolean
}

/** The flags a backend reads. */
export interface BackendValues {
  data?: string
  plc?: string
  'handle-resolver'?: string
  [flag: string]: unknown
}

export async function openBackend (values: BackendValues, ctx: CommandContext, init: OpenBackendInit = {}): Promise<Backend> {
  const dir = dataDir(values.data, ctx.env)
  const blockstore = blockstoreFlag(values.blockstore as string | undefined)
  const recorded = blockstore === undefined ? undefined : readBlockstoreKind(dir)
  // said before a daemon is asked: it would otherwise go on with its own kind unnoticed
  if (recorded !== undefined && blockstore !== undefined && recorded !== blockstore) throw new BlockstoreKindError(dir, recorded, blockstore)
  const found = await ControlClient.forDataDir(dir)
  // says why there is none: never started, or killed and gone
  if (found === undefined && init.daemonOnly === true) await ControlClient.requireForDataDir(dir)
  if (found !== undefined) {
    const ignored = ['plc', 'handle-resolver', ...(init.daemonIgnores ?? [])]
      .filter(flag => values[flag] !== undefined && values[flag] !== false)
    if (ignored.length > 0) {
      ctx.stderr.write(`warning: a daemon is running on ${dir} (pid ${found.daemon.pid}); it works with its own configuration, ignoring ${ignored.map(flag => `--${flag}`).join(', ')}\n`)
    }
    return { api: found.client, dir, daemon: found.daemon, close: async () => {} }
  }
  // the identity settings as the daemon would take them: flag > environment > config file
  const config = await readConfig(configPath(undefined, ctx.env, dir), daemonOptions)
  const { values: identity } = applySettings(values, ['plc', 'handle-resolver'], daemonOptions, ctx.env, config)
  const { createMirrorNode } = await import('../../src/node.ts')
  const node = await createMirrorNode({
    dataDir: dir,
    blockstore,
    ...identityConfig(identity, ctx.env),
    network: false,
    api: false,
    checkOnStart: false,
    intervalMs: 0,
    ...init.local
  })
  try {
    if (init.start === true) await node.start()
  } catch (err) {
    await node.stop().catch(() => {})
    throw err
  }
  return { api: node, dir, node, close: async () => { await node.stop() } }
}
