// Fixed-width tables in the seed's layout. Each column has a width; the last
// column is never padded. Values longer than their column push the rest right
// rather than being cut, so nothing a user needs is hidden.

export interface Column<Row> {
  header: string;
  width: number;
  align?: 'left' | 'right';
  value: (row: Row) => string;
}

function cell(text: string, width: number, align: 'left' | 'right', last: boolean): string {
  if (last) return text;
  if (align === 'right') return text.padStart(width);
  return text.length >= width ? `${text} ` : text.padEnd(width);
}

export function renderTable<Row>(columns: readonly Column<Row>[], rows: readonly Row[]): string {
  const line = (texts: string[]): string =>
    texts.map((t, i) => cell(t, columns[i].width, columns[i].align ?? 'left', i === columns.length - 1)).join('');
  return [line(columns.map((c) => c.header)), ...rows.map((r) => line(columns.map((c) => c.value(r))))].join('\n');
}
