// The kernel's mount table, as /proc/self/mountinfo shows it. Used to know
// whether a filesystem or a FUSE mount is still there before and after each
// step, instead of trusting that a command did what it said.
import { readFile } from 'node:fs/promises';

export interface MountEntry {
  /** Device number of the mounted filesystem, "major:minor". */
  majMin: string;
  mountpoint: string;
  fstype: string;
  source: string;
}

/** mountinfo escapes space, tab, newline and backslash as \ooo octal. */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/**
 * Parse mountinfo lines: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS`.
 * The optional fields vary in number, so the part after " - " is found by the separator.
 */
export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const sep = fields.indexOf('-', 6);
    if (fields.length < 10 || sep < 0 || sep + 2 >= fields.length) continue;
    entries.push({ majMin: fields[2], mountpoint: unescape(fields[4]), fstype: fields[sep + 1], source: unescape(fields[sep + 2]) });
  }
  return entries;
}

export async function readMounts(): Promise<MountEntry[]> {
  return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
}

/** The topmost mount at exactly this path, if any. */
export async function mountAt(mountpoint: string): Promise<MountEntry | undefined> {
  return (await readMounts()).filter((m) => m.mountpoint === mountpoint).pop();
}
