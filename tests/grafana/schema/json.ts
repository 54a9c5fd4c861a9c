// A dashboard's JSON model as @grafana/schema types it. The schema writes string fields with
// a fixed set of values as TypeScript enums (ThresholdsMode.Absolute = 'absolute'), while
// the JSON holds their values ('absolute'): Json<T> turns each enum into the union of its
// values and leaves every other type, optional field and array as the schema has it.
export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends Array<infer Item>
      ? Array<Json<Item>>
      : T extends object
        ? { [Key in keyof T]: Json<T[Key]> }
        : T;
