/**
 * What every command gets: output streams, the environment, an abort signal, and
 * one way to report failure. Commands never touch process.* themselves, so they
 * can be driven from tests with captured streams.
 *
 * Failure output is written for people: `error: <message>`, the error's name in
 * parentheses when it is one of atmirror's (so it can be looked up), a `hint:` line
 * when the remedy is known, and the usage after a usage error. With `--json` it is
 * one object on stdout: `{"ok":false,"error":{"name","message",…}}`.
 */
import { homedir } from 'node:os'
import { join } from 'node:path'
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { AtmirrorError } from '../../src/errors.ts'

export interface CommandContext {
  stdout: NodeJS.WritableStream & { isTTY?: boolean }
  stderr: NodeJS.WritableStream & { isTTY?: boolean }
  env: NodeJS.ProcessEnv
  signal: AbortSignal
  /** Prints the error (JSON with `json`) and returns the exit code (1; 2 for usage). */
  fail: (err: unknown, options?: { json?: boolean }) => number
}

export interface Command {
  /** Returns the process exit code. */
  run: (args: string[], context: CommandContext) => Promise<number>
}

/** Wrong arguments: exit code 2, and the command's usage. */
export class UsageError extends Error {
  /** The command's usage, printed after the message. */
  usage?: string
  constructor (message: string, usage?: string) {
    super(message)
    this.name = 'UsageError'
    this.usage = usage
  }
}

export function createCommandContext (init: Partial<CommandContext> & { signal: AbortSignal }): CommandContext {
  const stdout = init.stdout ?? process.stdout
  const stderr = init.stderr ?? process.stderr
  return {
    stdout,
    stderr,
    env: init.env ?? process.env,
    signal: init.signal,
    fail (err, options = {}) {
      const e = err instanceof Error ? err : new Error(String(err))
      const usage = e instanceof UsageError ? e.usage : undefined
      const message = userMessage(e)
      const hint = hintFor(e)
      if (options.json === true) {
        const error: Record<string, unknown> = { name: e.name, message }
        const code = (e as NodeJS.ErrnoException).code
        if (typeof code === 'string') error.code = code
        if (hint !== undefined) error.hint = hint
        if (usage !== undefined) error.usage = usage
        stdout.write(JSON.stringify({ ok: false, error }) + '\n')
      } else {
        const named = e instanceof AtmirrorError ? ` (${e.name})` : ''
        stderr.write(`error: ${message}${named}\n`)
        const cause = e.cause instanceof Error ? userMessage(e.cause).split('\n')[0] as string : undefined
        // a hint says what to do; the system's own words would only repeat the error
        if (cause !== undefined && hint === undefined && !message.includes(cause)) stderr.write(`  cause: ${cause}\n`)
        if (hint !== undefined) stderr.write(`hint: ${hint}\n`)
        if (usage !== undefined) stderr.write(`\n${usage}\n`)
      }
      return e instanceof UsageError ? 2 : 1
    }
  }
}

/** The message, with a system error's code and path said plainly. */
function userMessage (err: Error): string {
  const { code, path, syscall } = err as NodeJS.ErrnoException
  if (err instanceof AtmirrorError || typeof code !== 'string') return err.message
  const what: Record<string, string> = {
    EACCES: 'permission denied',
    EPERM: 'operation not permitted',
    ENOENT: 'no such file or directory',
    ENOTDIR: 'not a directory',
    EISDIR: 'is a directory',
    EROFS: 'read-only filesystem',
    ENOSPC: 'no space left on the device',
    EADDRINUSE: 'address already in use',
    ECONNREFUSED: 'connection refused'
  }
  const said = what[code]
  if (said === undefined) return err.message
  return `${said}${path === undefined ? '' : `: ${path}`}${syscall === undefined ? '' : ` (${syscall})`}`
}

/** What to do about an error, when that is known. */
export function hintFor (err: Error): string | undefined {
  const code = (err as NodeJS.ErrnoException).code
  switch (err.name) {
    case 'DataDirError':
      if (code === 'ENOTDIR') return '--data (or ATMIRROR_DATA) must name a directory; it is created if missing'
      if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') return 'choose a data directory you can write with --data DIR (or ATMIRROR_DATA), or fix its owner and permissions'
      return 'choose a data directory on an ordinary filesystem with --data DIR (or ATMIRROR_DATA)'
    case 'DataDirLockedError':
      return 'another atmirror process (named by pid) uses this data directory: stop it, or use another --data'
    case 'BlockstoreKindError':
      return 'a data directory keeps the blockstore it was made with: leave out --blockstore, or use another --data'
    case 'ListenError':
      return 'another process listens there: pick a free port (--listen …/tcp/PORT, --api PORT; 0 picks any free one)'
    case 'DidResolutionError':
    case 'DidNotFoundError':
      if (/not a PLC directory|refuses this port|connection refused/.test(err.message)) return 'check --plc (or ATMIRROR_PLC): it must name a running PLC directory such as https://plc.directory'
      return undefined
    default:
      if (code === 'EACCES' || code === 'EPERM') return 'check the file permissions, or choose another path'
      return undefined
  }
}

/** Options every command accepts. */
export const globalOptions = {
  data: { type: 'string' },
  plc: { type: 'string' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false }
} as const satisfies NonNullable<ParseArgsConfig['options']>

type Options = NonNullable<ParseArgsConfig['options']>

/** What {@link parse} returns for a set of options. */
export type Parsed<O extends Options> = ReturnType<typeof parse<O>>

/**
 * A command from its usage text, its options and a body: parses the arguments
 * (usage errors exit 2, with the usage), answers --help, and turns a thrown error
 * into `ctx.fail` (JSON with --json, even when the arguments did not parse).
 */
export function defineCommand<O extends Options & typeof globalOptions> (spec: {
  usage: string
  options: O
  run: (parsed: Parsed<O>, ctx: CommandContext) => Promise<number>
}): Command {
  return {
    async run (args, ctx) {
      let json = args.includes('--json')
      try {
        const parsed = parse(args, spec.options)
        const values = parsed.values as { help?: boolean, json?: boolean }
        json = values.json === true
        if (values.help === true) {
          ctx.stdout.write(spec.usage + '\n')
          return 0
        }
        return await spec.run(parsed, ctx)
      } catch (err) {
        if (err instanceof UsageError && err.usage === undefined) err.usage = spec.usage
        return ctx.fail(err, { json })
      }
    }
  }
}

/**
 * Exactly one positional argument per entry of `names` (e.g. `['DID or handle']`,
 * or `[]` for none); anything else is a usage error naming what is wrong.
 */
export function expectPositionals (positionals: string[], names: string[]): string[] {
  if (positionals.length < names.length) throw new UsageError(`missing ${names[positionals.length]}`)
  if (positionals.length > names.length) throw new UsageError(`unexpected arguments: ${positionals.slice(names.length).join(' ')}`)
  return positionals
}

/** node:util parseArgs, its errors said for people (with a did-you-mean for a mistyped option). */
export function parse<O extends Options> (args: string[], options: O, init: { allowPositionals?: boolean } = {}) {
  try {
    return parseArgs({ args, options, allowPositionals: init.allowPositionals ?? true, strict: true })
  } catch (err) {
    throw new UsageError(parseErrorMessage(err as NodeJS.ErrnoException, options))
  }
}

function parseErrorMessage (err: NodeJS.ErrnoException, options: Options): string {
  const quoted = /'([^']+)'/.exec(err.message)?.[1]
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && quoted !== undefined) {
    const names = Object.entries(options).flatMap(([name, option]) => [`--${name}`, ...(option.short === undefined ? [] : [`-${option.short}`])])
    const given = quoted.split('=')[0] as string
    const near = closest(given, names)
    return `unknown option ${given}${near === undefined ? '' : ` (did you mean ${near}?)`}`
  }
  if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && quoted !== undefined) {
    const name = quoted.split(' ')[0] as string
    return /argument missing/.test(err.message) ? `option ${name} needs a value` : `option ${name} takes no value`
  }
  return err.message
}

/** The name nearest to `given` by edit distance, if it is near enough to be a typo. */
export function closest (given: string, names: string[]): string | undefined {
  let best: { name: string, distance: number } | undefined
  for (const name of names) {
    const distance = editDistance(given, name)
    if (best === undefined || distance < best.distance) best = { name, distance }
  }
  if (best === undefined) return undefined
  const bare = given.replace(/^-+/, '')
  return best.distance <= Math.max(1, Math.floor(bare.length / 3)) || best.name.startsWith(given) ? best.name : undefined
}

/** Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`. */
function editDistance (a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => i === 0 ? j : j === 0 ? i : 0))
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = d[i] as number[]
      const up = d[i - 1] as number[]
      row[j] = Math.min((up[j] as number) + 1, (row[j - 1] as number) + 1, (up[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1))
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) row[j] = Math.min(row[j] as number, ((d[i - 2] as number[])[j - 2] as number) + 1)
    }
  }
  return (d[a.length] as number[])[b.length] as number
}

/** The data directory: --data, then ATMIRROR_DATA, then ~/.atmirror. */
export function dataDir (flag: string | undefined, env: NodeJS.ProcessEnv): string {
  return flag ?? env.ATMIRROR_DATA ?? join(homedir(), '.atmirror')
}

/** The PLC directory: --plc, then ATMIRROR_PLC, then https://plc.directory. */
export function plcUrl (flag: string | undefined, env: NodeJS.ProcessEnv): string {
  return flag ?? env.ATMIRROR_PLC ?? 'https://plc.directory'
}
