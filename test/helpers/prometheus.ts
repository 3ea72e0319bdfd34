/**
 * A strict reader of the Prometheus text exposition format (0.0.4), for tests of
 * `/metrics`: every line must be a `# HELP`, a `# TYPE`, a comment, a blank line or
 * a sample of a family whose `# TYPE` came first; anything else throws, naming the
 * line. Samples are returned by name and labels.
 */

export interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

export interface Exposition {
  /** Family name → type (`counter`, `gauge`, `histogram`, `summary`, `untyped`). */
  types: Map<string, string>
  samples: Sample[]
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*'
const LABEL = '[a-zA-Z_][a-zA-Z0-9_]*'
// as Prometheus reads them (Go's ParseFloat: Inf and NaN in any case; prom-client writes `Nan`)
const VALUE = String.raw`(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?[iI][nN][fF]|[nN][aA][nN])`
const SAMPLE = new RegExp(String.raw`^(${NAME})(?:\{(.*)\})? (${VALUE})(?: (-?\d+))?$`)
const LABEL_PAIR = new RegExp(String.raw`^(${LABEL})="((?:[^"\\\n]|\\[\\"n])*)"(,|$)`)
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped'])
const SUFFIXES: Record<string, string[]> = { histogram: ['_bucket', '_sum', '_count'], summary: ['_sum', '_count', ''] }

/** Parses an exposition; throws on the first line that does not follow the format. */
export function parseExposition (text: string): Exposition {
  const types = new Map<string, string>()
  const samples: Sample[] = []
  const lines = text.split('\n')
  if (lines.at(-1) === '') lines.pop()
  lines.forEach((line, i) => {
    const fail = (why: string): never => { throw new Error(`line ${i + 1} of the exposition ${why}: ${JSON.stringify(line)}`) }
    if (line === '') return
    if (line.startsWith('#')) {
      const type = new RegExp(`^# TYPE (${NAME}) (\\S+)$`).exec(line)
      if (type !== null) {
        if (!TYPES.has(type[2])) fail('has an unknown type')
        if (types.has(type[1])) fail('types a family twice')
        types.set(type[1], type[2])
        return
      }
      if (line.startsWith('# HELP ') && !new RegExp(`^# HELP ${NAME}( .*)?$`).test(line)) fail('is a malformed HELP')
      if (line.startsWith('# TYPE')) fail('is a malformed TYPE')
      return
    }
    const match = SAMPLE.exec(line) ?? fail('is not a sample')
    const [, name, labelText, value] = match
    if (familyOf(name, types) === undefined) fail('is a sample of a family without a TYPE line before it')
    const labels: Record<string, string> = {}
    let rest = labelText ?? ''
    while (rest !== '') {
      const pair = LABEL_PAIR.exec(rest) ?? fail('has malformed labels')
      if (Object.hasOwn(labels, pair[1])) fail('repeats a label')
      labels[pair[1]] = pair[2].replace(/\\(.)/g, (_, c: string) => c === 'n' ? '\n' : c)
      rest = rest.slice(pair[0].length)
    }
    samples.push({ name, labels, value: /inf/i.test(value) ? (value.startsWith('-') ? -Infinity : Infinity) : /nan/i.test(value) ? NaN : Number(value) })
  })
  return { types, samples }
}

function familyOf (name: string, types: Map<string, string>): string | undefined {
  if (types.has(name)) return name
  for (const [family, type] of types) {
    if ((SUFFIXES[type] ?? []).some(suffix => suffix !== '' && name === family + suffix)) return family
  }
  return undefined
}

/** The value of the one sample named `name` whose labels include `labels`; throws when there is none or more than one. */
export function sampleValue (exposition: Exposition, name: string, labels: Record<string, string> = {}): number {
  const found = exposition.samples.filter(sample => sample.name === name && Object.entries(labels).every(([k, v]) => sample.labels[k] === v))
  if (found.length !== 1) throw new Error(`${found.length} samples of ${name}${JSON.stringify(labels)}`)
  return found[0].value
}
