using ComposerSharp.Interop.Kernels;
using ComposerSharp.Training.Optim;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Training;

/// <summary>
/// <see cref="FusedDecoupledSGDW"/> and <see cref="FusedDecoupledLionW"/> against float64 references written here from
/// Composer's <c>DecoupledSGDW.sgdw</c> (composer/optim/decoupled_weight_decay.py) and llm-foundry's
/// <c>DecoupledLionW.lionw</c> (llmfoundry/optim/lion.py), and for their checkpoints and flat layout.
/// </summary>
/// <remarks>
/// Inputs as in <c>FusedAdamWTests</c>: Float32 parameters of 1, 7, 33 and 1000 elements ~ N(0, 1), fresh gradients
/// ~ N(0, 0.1²) every step, 100 steps, a learning rate decaying linearly (so <c>lr / initial_lr</c> matters), seeds
/// in the messages. Tolerances after 100 steps: parameters, per parameter <c>max |fused − reference| / max(max |reference|, 1)</c>
/// ≤ 1e-6 and elementwise <c>|fused − reference| / max(|reference|, 1)</c> ≤ 2e-6 (the Float32 storage of a
/// parameter rounds it every step); the state tensor relative to its max floored at the gradients' scale ≤ 1e-6.
/// Lion's <c>sign</c> of a value within Float32 rounding of 0 (|c| &lt; 1e-6 in float64) is undefined between the two
/// precisions: there the reference takes whichever of −1, 0, +1 the fused step took (counted and printed; about one
/// element-step in 10⁵).
/// </remarks>
[TestFixture]
public class FusedDecoupledSgdwLionTests
{
    private const double Tolerance = 1e-6;
    private const double ElementwiseTolerance = 2e-6;
    private const double GradientScale = 0.1;
    private static readonly long[] Sizes = { 1, 7, 33, 1000 };
    private static readonly SimdPath[] Paths = { SimdPath.Avx512, SimdPath.Avx2, SimdPath.Scalar };

    [TestCase(0.9, 0.1, false, 1e-2)]
    [TestCase(0.9, 0.0, true, 1e-2)]
    [TestCase(0.0, 0.0, false, 0.0)]
    public void SgdwHundredStepsMatchTheFloat64FormulasOnEveryPath(double momentum, double dampening, bool nesterov, double wd)
    {
        foreach (SimdPath path in Paths.Where(LayerNormCpuKernel.IsSupported))
        {
            int seed = TestContext.CurrentContext.Random.Next();
            const double lr0 = 1e-2;
            var gen = new Random(seed);
            List<Parameter> ps = Sizes.Select(n => new Parameter(RandomFloats(gen, n, 1.0))).ToList();
            var p64 = ps.Select(p => p.data<float>().ToArray().Select(x => (double)x).ToArray()).ToList();
            var b64 = Sizes.Select(n => new double[n]).ToList();
            using var opt = new FusedDecoupledSGDW(ps, lr0, momentum, dampening, wd, nesterov, path);
            for (int t = 1; t <= 100; t++)
            {
                double lr = lr0 * (1 - (t / 200.0));
                opt.ParamGroups.Single().LearningRate = lr;
                for (int i = 0; i < ps.Count; i++)
                {
                    float[] g = RandomFloats(gen, Sizes[i], GradientScale).data<float>().ToArray();
                    ps[i].grad = torch.tensor(g);
                    for (int j = 0; j < g.Length; j++)
                    {
                        double d = g[j];
                        if (momentum != 0)
                        {
                            b64[i][j] = t == 1 ? g[j] : (momentum * b64[i][j]) + ((1 - dampening) * g[j]);
                            d = nesterov ? g[j] + (momentum * b64[i][j]) : b64[i][j];
                        }

                        if (wd != 0)
                        {
                            p64[i][j] *= 1 - (lr / lr0 * wd);
                        }

                        p64[i][j] -= lr * d;
                    }
                }

                opt.step();
            }

            double worst = 0, worstElementwise = 0, worstB = 0;
            for (int i = 0; i < ps.Count; i++)
            {
                float[] actual = ps[i].data<float>().ToArray();
                worst = Math.Max(worst, MaxError(actual, p64[i], Math.Max(p64[i].Max(Math.Abs), 1)));
                worstElementwise = Math.Max(worstElementwise, MaxError(actual, p64[i], 1));
                FlatStateOptimizer.State s = opt.StateOf(ps[i]);
                Assert.That(s.step, Is.EqualTo(100));
                worstB = Math.Max(worstB, MaxError(s.buffer.data<float>().ToArray(), b64[i], Math.Max(b64[i].Max(Math.Abs), GradientScale)));
            }

            TestContext.Out.WriteLine($"SGDW path {path}, momentum {momentum}, nesterov {nesterov}: params {worst:E2} (elementwise {worstElementwise:E2}), momentum_buffer {worstB:E2} (seed {seed})");
            Assert.That(worst, Is.LessThanOrEqualTo(Tolerance), $"parameters, path {path}, seed {seed}");
            Assert.That(worstElementwise, Is.LessThanOrEqualTo(ElementwiseTolerance), $"parameters elementwise, path {path}, seed {seed}");
            Assert.That(worstB, Is.LessThanOrEqualTo(Tolerance), $"momentum_buffer, path {path}, seed {seed}");
            ps.ForEach(p => p.Dispose());
        }
    }

    [Test]
    public void LionWHundredStepsMatchTheFloat64FormulasOnEveryPath()
    {
        foreach (SimdPath path in Paths.Where(LayerNormCpuKernel.IsSupported))
        {
            int seed = TestContext.CurrentContext.Random.Next();
            const double lr0 = 1e-3, beta1 = 0.9, beta2 = 0.99, wd = 0.1;
            var gen = new Random(seed);
            List<Parameter> ps = Sizes.Select(n => new Parameter(RandomFloats(gen, n, 1.0))).ToList();
            var p64 = ps.Select(p => p.data<float>().ToArray().Select(x => (double)x).ToArray()).ToList();
            var m64 = Sizes.Select(n => new double[n]).ToList();
            var grads = new List<float[]>();
            int ambiguous = 0;
            using var opt = new FusedDecoupledLionW(ps, lr0, beta1, beta2, wd, path);
            for (int t = 1; t <= 100; t++)
            {
                double lr = lr0 * (1 - (t / 200.0));
                opt.ParamGroups.Single().LearningRate = lr;
                grads.Clear();
                for (int i = 0; i < ps.Count; i++)
                {
                    float[] g = RandomFloats(gen, Sizes[i], GradientScale).data<float>().ToArray();
                    grads.Add(g);
                    ps[i].grad = torch.tensor(g);
                }

                opt.step();
                for (int i = 0; i < ps.Count; i++)
                {
                    float[] fused = ps[i].data<float>().ToArray();
                    for (int j = 0; j < fused.Length; j++)
                    {
                        double decayed = p64[i][j] * (1 - (lr / lr0 * wd));
                        double c = m64[i][j] + ((1 - beta1) * (grads[i][j] - m64[i][j]));
                        double u = Math.Sign(c);
                        if (Math.Abs(c) < 1e-6)
                        {
                            // Within rounding of 0: take the sign the fused step took.
                            ambiguous++;
                            u = new[] { -1.0, 0.0, 1.0 }.MinBy(s => Math.Abs(decayed - (lr * s) - fused[j]));
                        }

                        p64[i][j] = decayed - (lr * u);
                        m64[i][j] += (1 - beta2) * (grads[i][j] - m64[i][j]);
                    }
                }
            }

            double worst = 0, worstElementwise = 0, worstM = 0;
            for (int i = 0; i < ps.Count; i++)
            {
                float[] actual = ps[i].data<float>().ToArray();
                worst = Math.Max(worst, MaxError(actual, p64[i], Math.Max(p64[i].Max(Math.Abs), 1)));
                worstElementwise = Math.Max(worstElementwise, MaxError(actual, p64[i], 1));
                worstM = Math.Max(worstM, MaxError(opt.StateOf(ps[i]).buffer.data<float>().ToArray(), m64[i], Math.Max(m64[i].Max(Math.Abs), GradientScale)));
            }

            TestContext.Out.WriteLine($"LionW path {path}: params {worst:E2} (elementwise {worstElementwise:E2}), exp_avg {worstM:E2}, {ambiguous} signs within rounding of 0 (seed {seed})");
            Assert.That(worst, Is.LessThanOrEqualTo(Tolerance), $"parameters, path {path}, seed {seed}");
            Assert.That(worstElementwise, Is.LessThanOrEqualTo(ElementwiseTolerance), $"parameters elementwise, path {path}, seed {seed}");
            Assert.That(worstM, Is.LessThanOrEqualTo(Tolerance), $"exp_avg, path {path}, seed {seed}");
            ps.ForEach(p => p.Dispose());
        }
    }

    [Test]
    public void ACheckpointResumesBitForBitAndAParameterWithoutGradientIsUntouched([Values] bool lion)
    {
        var gen = new Random(11);
        Tensor[] init = Sizes.Select(n => RandomFloats(gen, n, 1.0)).ToArray();
        List<Parameter> a = init.Select(t => new Parameter(t.clone())).ToList();
        using var unused = new Parameter(RandomFloats(gen, 5, 1.0));
        float[] unusedBefore = unused.data<float>().ToArray();
        FlatStateOptimizer Make(IEnumerable<Parameter> ps) => lion
            ? new FusedDecoupledLionW(ps, 1e-3, 0.9, 0.99, 0.1)
            : new FusedDecoupledSGDW(ps, 1e-2, 0.9, 0.0, 0.1, nesterov: true);
        using FlatStateOptimizer first = Make(a.Append(unused));
        for (int t = 0; t < 5; t++)
        {
            for (int i = 0; i < a.Count; i++)
            {
                a[i].grad = RandomFloats(gen, Sizes[i], 0.1);
            }

            first.step();
        }

        Assert.That(unused.data<float>().ToArray(), Is.EqualTo(unusedBefore));
        Assert.That(first.StateOf(unused).step, Is.Zero);
        List<Parameter> b = a.Select(p => new Parameter(p.detach().clone())).ToList();
        using var unusedB = new Parameter(unused.detach().clone());
        using FlatStateOptimizer second = Make(b.Append(unusedB));
        using (var stream = new MemoryStream())
        {
            using (var writer = new BinaryWriter(stream, System.Text.Encoding.UTF8, leaveOpen: true))
            {
                first.save_state_dict(writer);
            }

            stream.Position = 0;
            using var reader = new BinaryReader(stream);
            second.load_state_dict(reader);
        }

        for (int t = 0; t < 3; t++)
        {
            for (int i = 0; i < a.Count; i++)
            {
                Tensor g = RandomFloats(gen, Sizes[i], 0.1);
                a[i].grad = g;
                b[i].grad = g.clone();
            }

            first.step();
            second.step();
        }

        for (int i = 0; i < a.Count; i++)
        {
            Assert.That(b[i].data<float>().ToArray(), Is.EqualTo(a[i].data<float>().ToArray()), $"parameter {i}");
            Assert.That(second.StateOf(b[i]).buffer.data<float>().ToArray(), Is.EqualTo(first.StateOf(a[i]).buffer.data<float>().ToArray()));
        }

        Assert.That(second.Layout.Offsets, Is.EqualTo(first.Layout.Offsets));
        Assert.That(first.Layout.Offsets, Is.EqualTo(new long[] { 0, 16, 32, 80, 1088 }));
        Assert.That(first.StateBuffer.narrow(0, 80, 1000).data<float>().ToArray(), Is.EqualTo(first.StateOf(a[3]).buffer.data<float>().ToArray()), "states are views of the flat buffer");
    }

    [Test]
    public void TheKernelsStepAnyShardOfTheFlatLayoutAsTheWholeBuffer([Values] bool lion)
    {
        var layout = new ComposerSharp.Core.Tensors.FlatBufferLayout(Sizes);
        var gen = new Random(5);
        float[] Rand(double scale) => RandomFloats(gen, layout.PaddedLength(3), scale).data<float>().ToArray();
        float[] p = Rand(1.0), g = Rand(0.1), s = Rand(0.1);
        float[] p2 = (float[])p.Clone(), s2 = (float[])s.Clone();
        void Run(Span<float> pp, ReadOnlySpan<float> gg, Span<float> ss)
        {
            if (lion)
            {
                LionWCpuKernel.Step(pp, gg, ss, new LionWStepScalars(1e-4, 1e-3, 0.9, 0.99));
            }
            else
            {
                SgdwCpuKernel.Step(pp, gg, ss, new SgdwStepScalars(1e-4, 1e-2, 0.9, 0.1, false, false));
            }
        }

        Run(p, g, s);
        for (int r = 0; r < 3; r++)
        {
            (long start, long length) = layout.ShardRange(r, 3);
            Run(p2.AsSpan((int)start, (int)length), g.AsSpan((int)start, (int)length), s2.AsSpan((int)start, (int)length));
        }

        Assert.That(p2, Is.EqualTo(p));
        Assert.That(s2, Is.EqualTo(s));
    }

    private static Tensor RandomFloats(Random gen, long n, double scale)
    {
        var values = new float[n];
        for (long i = 0; i < n; i++)
        {
            double u1 = 1 - gen.NextDouble(), u2 = gen.NextDouble();
            values[i] = (float)(scale * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }

        return torch.tensor(values);
    }

    private static double MaxError(float[] actual, double[] expected, double floor)
    {
        double worst = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]) / Math.Max(Math.Abs(expected[i]), floor));
        }

        return worst;
    }
}
