// The benchmark harness is being built (issue: Benchmarks); until then it says so and exits non-zero.
Console.Error.WriteLine("ComposerSharp.Benchmarks: no benchmarks yet.");
return 2;
