/**
 * Settings from outside the command line. Every daemon flag can also come from an
 * environment variable (`--listen` → `ATMIRROR_LISTEN`) and from a JSON config file
 * (`<data>/config.json`, or `--config FILE`) whose keys are the flag names:
 *
 * ```json
 * { "private": true, "listen": ["/ip4/0.0.0.0/tcp/4001"], "interval": 300, "plc": "https://plc.directory" }
 * ```
 *
 * Precedence: flag > environment > config file > default. In the environment a
 * repeatable flag takes a comma- or space-separated list, and a switch `1`, `true`,
 * `yes` or `on` (`0`, `false`, `no`, `off` turn it off); an empty variable counts as
 * unset. docs/CONFIGURATION.md lists them all.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { ParseArgsConfig } from 'node:util'
import { ConfigError } from '../../src/errors.ts'
import { closest } from './context.ts'

type Options = NonNullable<ParseArgsConfig['options']>

/** Where a setting's value came from. */
export type Source = 'flag' | 'env' | 'config' | 'default'

/** The environment variable of a flag: `--handle-resolver` → `ATMIRROR_HANDLE_RESOLVER`. */
export function envName (flag: string): string {
  return `ATMIRROR_${flag.toUpperCase().replaceAll('-', '_')}`
}

/** The config file's path: `--config FILE`, `ATMIRROR_CONFIG`, or `<data>/config.json`. */
export function configPath (flag: string | undefined, env: NodeJS.ProcessEnv, dataDir: string): { path: string, required: boolean } {
  const given = flag ?? (env.ATMIRROR_CONFIG === '' ? undefined : env.ATMIRROR_CONFIG)
  return given === undefined ? { path: join(dataDir, 'config.json'), required: false } : { path: given, required: true }
}

/**
 * Reads a config file: a JSON object whose keys are among `options`. A missing
 * default file is an empty config; a missing `--config` file is an error.
 */
export async function readConfig (file: { path: string, required: boolean }, options: Options): Promise<Record<string, unknown>> {
  let text: string
  try {
    text = await readFile(file.path, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (!file.required && (code === 'ENOENT' || code === 'ENOTDIR')) return {}
    throw new ConfigError(code === 'ENOENT' ? 'config file not found' : `config file unreadable (${code ?? (err as Error).message})`, { path: file.path }, { cause: err })
  }
  let config: unknown
  try {
    config = JSON.parse(text)
  } catch (err) {
    throw new ConfigError(`config file is not JSON (${(err as Error).message})`, { path: file.path })
  }
  if (config === null || typeof config !== 'object' || Array.isArray(config)) throw new ConfigError('config file is not a JSON object', { path: file.path })
  for (const key of Object.keys(config)) {
    if (!Object.hasOwn(options, key)) {
      const near = closest(key, Object.keys(options))
      throw new ConfigError(`unknown setting ${JSON.stringify(key)}${near === undefined ? '' : ` (did you mean ${JSON.stringify(near)}?)`}`, { path: file.path })
    }
  }
  return config as Record<string, unknown>
}

/**
 * The values with every `keys` flag not given on the command line filled in from
 * the environment, then from `config`. Returns them with the source of each.
 */
export function applySettings<V extends Record<string, unknown>> (values: V, keys: readonly string[], options: Options, env: NodeJS.ProcessEnv, config: Record<string, unknown>, configFile?: string): { values: V, sources: Record<string, Source> } {
  const out: Record<string, unknown> = { ...values }
  const sources: Record<string, Source> = {}
  for (const key of keys) {
    const option = options[key]
    if (option === undefined) continue
    if (values[key] !== undefined) {
      sources[key] = 'flag'
      continue
    }
    const name = envName(key)
    const text = env[name]
    if (text !== undefined && text !== '') {
      out[key] = fromEnv(name, text, option)
      sources[key] = 'env'
      continue
    }
    if (Object.hasOwn(config, key)) {
      out[key] = fromConfig(key, config[key], option, configFile)
      sources[key] = 'config'
      continue
    }
    sources[key] = 'default'
  }
  return { values: out as V, sources }
}

type Option = Options[string]

function fromEnv (name: string, text: string, option: Option): unknown {
  if (option.type === 'boolean') {
    if (/^(1|true|yes|on)$/i.test(text)) return true
    if (/^(0|false|no|off)$/i.test(text)) return false
    throw new ConfigError(`${name} must be a switch (1/0, true/false, yes/no, on/off), got ${JSON.stringify(text)}`)
  }
  if (option.multiple === true) return text.split(/[\s,]+/).filter(part => part !== '')
  return text
}

function fromConfig (key: string, value: unknown, option: Option, path?: string): unknown {
  const wrong = (what: string): ConfigError => new ConfigError(`setting ${JSON.stringify(key)} must be ${what}, got ${JSON.stringify(value)}`, { path })
  if (option.type === 'boolean') {
    if (typeof value !== 'boolean') throw wrong('true or false')
    return value
  }
  const scalar = (v: unknown): string => {
    if (typeof v === 'string') return v
    if (typeof v === 'number' && Number.isFinite(v)) return String(v)
    throw wrong(option.multiple === true ? 'a string or a list of strings' : 'a string or a number')
  }
  if (option.multiple === true) return Array.isArray(value) ? value.map(scalar) : [scalar(value)]
  return scalar(value)
}
