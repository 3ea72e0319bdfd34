#!/usr/bin/env node
/**
 * atmirror command line. Each verb lives in bin/commands/<verb>.ts and exports
 * `run(args, context)`; this file only dispatches, wires SIGINT/SIGTERM to an
 * AbortController and turns errors into an exit code.
 */
import { closest, createCommandContext, type Command } from './commands/context.ts'
import { relaunchForBulkWork } from './relaunch.ts'

const commands: Record<string, { summary: string, load: () => Promise<Command> }> = {
  car: { summary: 'verify or list a repository CAR file (car verify|ls FILE.car)', load: async () => (await import('./commands/car.ts')).command },
  resolve: { summary: 'resolve a DID or handle: key, PDS, PeerID, rendezvous CID', load: async () => (await import('./commands/resolve.ts')).command },
  head: { summary: "fetch and verify a repo's latest signed commit", load: async () => (await import('./commands/head.ts')).command },
  mirror: { summary: 'mirror a repo once (resolve, sync, verify, store, pin)', load: async () => (await import('./commands/mirror.ts')).command },
  export: { summary: 'write a stored repo as a CAR file', load: async () => (await import('./commands/export.ts')).command },
  verify: { summary: 'check stored repos end to end and refetch damaged blocks', load: async () => (await import('./commands/verify.ts')).command },
  du: { summary: 'bytes on disk: in all, blocks, and per stored repo', load: async () => (await import('./commands/du.ts')).command },
  block: { summary: 'print a block by CID (block get CID [--offline])', load: async () => (await import('./commands/block.ts')).command },
  records: { summary: 'list the records of a mirrored repo (records DID [COLLECTION])', load: async () => (await import('./commands/records.ts')).recordsCommand },
  record: { summary: 'print one mirrored record as JSON (record get at://…)', load: async () => (await import('./commands/records.ts')).recordCommand },
  pin: { summary: 'pin add|rm|ls DID-or-handle', load: async () => (await import('./commands/pin.ts')).command },
  daemon: { summary: 'run the node: keep pinned repos current and serve them', load: async () => (await import('./commands/daemon.ts')).command },
  status: { summary: "the daemon's peer id, addresses and pinned repos", load: async () => (await import('./commands/status.ts')).command },
  peers: { summary: "the daemon's connected peers", load: async () => (await import('./commands/peers.ts')).command },
  mirrors: { summary: 'peers that announce a DID on the DHT', load: async () => (await import('./commands/mirrors.ts')).command }
}

function usage (): string {
  const width = Math.max(...Object.keys(commands).map(name => name.length))
  const lines = Object.entries(commands).map(([name, { summary }]) => `  ${name.padEnd(width)}  ${summary}`)
  return [
    'usage: atmirror <command> [options]',
    '',
    'commands:',
    ...lines,
    '',
    'global options: --data DIR (ATMIRROR_DATA), --plc URL (ATMIRROR_PLC), --json',
    "run 'atmirror <command> --help' for a command's options"
  ].join('\n')
}

async function main (argv: string[]): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage() + '\n')
    return name === undefined ? 2 : 0
  }
  if (name === '--version' || name === '-v') {
    const { readFile } = await import('node:fs/promises')
    const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'))
    process.stdout.write(`${pkg.version}\n`)
    return 0
  }
  const entry = commands[name]
  if (entry === undefined) {
    const near = closest(name, Object.keys(commands))
    process.stderr.write(`error: unknown command ${JSON.stringify(name)}${near === undefined ? '' : ` (did you mean ${near}?)`}\n\n${usage()}\n`)
    return 2
  }
  const controller = new AbortController()
  const onSignal = (): void => { controller.abort(new DOMException('interrupted', 'AbortError')) }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  const context = createCommandContext({ signal: controller.signal })
  try {
    const command = await entry.load()
    return await command.run(rest, context)
  } catch (err) {
    return context.fail(err)
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}

// before any work: the verbs that sync or read whole repos run with a young
// generation sized for that (relaunch.ts says why); this returns when no relaunch is needed
relaunchForBulkWork(process.argv[2])
process.exitCode = await main(process.argv.slice(2))
